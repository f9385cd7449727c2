"""Sharded extraction over 2 CPU processes (accelerate + gloo) returns the single-process features, in order."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

from facezoo.eval.extract import extract_features

SCRIPT = textwrap.dedent("""
    import sys, torch, timm
    from accelerate import Accelerator
    from facezoo.eval.extract import extract_features
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2, acc.num_processes
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=0).eval()
    images = torch.randint(0, 256, (7, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    f, ff = extract_features(model, images, batch_size=2, accelerator=acc, progress=False)
    if acc.is_main_process:
        torch.save({"f": f, "ff": ff}, sys.argv[1])
""")


@pytest.mark.dist
@pytest.mark.slow
def test_two_process_extraction_equals_single(tmp_path, free_port):
    script = tmp_path / "shard.py"
    script.write_text(SCRIPT)
    out = tmp_path / "feats.pt"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]
        ),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port),
        str(script),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=0).eval()
    images = torch.randint(0, 256, (7, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    f, ff = extract_features(model, images, batch_size=3, progress=False)
    assert got["f"].shape == f.shape == (7, model.num_features)
    torch.testing.assert_close(got["f"], f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["ff"], ff, atol=1e-5, rtol=1e-5)
