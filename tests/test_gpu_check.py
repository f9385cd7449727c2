"""benchmarks/gpu_check.sh's own mechanics (one line per check, SKIP off CUDA, exit status, temp folder removed).

The checks themselves run in CI through ``.ci/run`` (``gpu_check.sh --cpu``, about a minute): here only what needs no
training, so these tests take well under a second each.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hub_helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(tmp_path, *args, python="python3"):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHON": python}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_help_and_unknown_option(tmp_path):
    done = _run(tmp_path, "--help")
    assert done.returncode == 0 and "--cpu" in done.stdout and "set -euo" not in done.stdout
    done = _run(tmp_path, "--bogus")
    assert done.returncode == 2 and "unknown option --bogus" in done.stderr


def test_cuda_only_checks_skip_on_cpu(tmp_path):
    done = _run(tmp_path, "--cpu", "--only", "cuda,train_fp16_scaler,train_bf16,train_compile")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in ("cuda", "train_fp16_scaler", "train_bf16", "train_compile"):
        assert any(line.split()[:2] == [name, "SKIP"] for line in lines), done.stdout
    assert lines[-1].startswith("0 passed, 0 failed, 4 skipped")
    assert list(tmp_path.iterdir()) == []  # the work folder is removed


def test_a_failed_check_fails_the_run(tmp_path):
    done = _run(tmp_path, "--cpu", "--only", "synth_data,export_onnx", python="false")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(line.split()[:2] == ["synth_data", "FAIL"] for line in lines), done.stdout
    assert any(line.split()[:2] == ["export_onnx", "SKIP"] for line in lines)  # no onnx for this "python"
    assert lines[-1].startswith("0 passed, 1 failed, 1 skipped")
    assert list(tmp_path.iterdir()) == []


def test_keep_leaves_the_logs(tmp_path):
    keep = tmp_path / "out"
    done = _run(tmp_path, "--cpu", "--only", "synth_data", "--keep", str(keep), python="false")
    assert done.returncode == 1 and f"log: {keep}/logs/synth_data.log" in done.stdout
    assert (keep / "logs" / "synth_data.log").is_file()
