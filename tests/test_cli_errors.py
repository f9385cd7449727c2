"""The mistakes a newcomer makes on every ``facezoo`` command: each is ONE stderr line that names the path, record,
key or name and what was expected, exit code 2, no traceback; ``--debug`` / ``FACEZOO_DEBUG=1`` show the traceback.

Most cases run ``facezoo.cli.main`` in-process (fast); a few run ``python -m facezoo`` for real exit codes and
stderr. Nothing here reaches the network: Hub lookups go to a closed local port, a local server that never answers,
or an empty offline cache.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import List, NamedTuple

import pytest
import torch

import facezoo
from facezoo.cli import main
from facezoo.errors import CheckpointError, HubError, MissingPathError, UnknownNameError

REPO = Path(__file__).resolve().parents[1]


class Result(NamedTuple):
    rc: int
    out: str
    err: List[str]  # the non-empty stderr lines


@pytest.fixture
def cli(capsys):
    """``cli(*argv)``: run ``facezoo ARGV`` in this process; argparse's exits become return codes."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        return Result(rc, out, [line for line in err.splitlines() if line.strip()])

    return run


def one_error_line(result: Result, *names: str, prog: str = "facezoo") -> str:
    """The single stderr line of a user error (exit code 2, no traceback), checked to mention each of ``names``."""
    assert result.rc == 2, result
    assert len(result.err) == 1, result.err
    line = result.err[0]
    assert line.startswith(f"{prog}") and ": error: " in line, line
    assert "Traceback" not in line and "internal error" not in line, line
    for name in names:
        assert name in line, (name, line)
    return line


def facezoo_process(*args: str, env: dict = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m facezoo ARGS`` in a fresh process (this checkout first on the path)."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    full_env.pop("FACEZOO_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "facezoo", *args], env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def bins(tmp_path_factory, make_bins):
    return make_bins(tmp_path_factory.mktemp("bins"))  # lfw.bin, cfp_fp.bin, agedb_30/ (HF pairs)


@pytest.fixture(scope="module")
def not_checkpoints(tmp_path_factory):
    """Files named like checkpoints that are none, by kind; each maps to what the error must say."""
    root = tmp_path_factory.mktemp("not_ckpt")
    files = {}

    def add(name, data, says):
        (root / name).write_bytes(data)
        files[name] = (root / name, says)

    add("random.pth", bytes(range(7, 250, 3)) * 9, "not a torch checkpoint")
    add("text.pth", b"this is a README, not weights\n", "not a torch checkpoint")
    add("empty.pth", b"", "the file is empty, not a torch checkpoint")
    add("list.pth", pickle.dumps([1, 2, 3], protocol=2), "a Python pickle, but not a torch checkpoint")
    add("garbage.pt", b"\x80\x02garbage after a pickle header", "a Python pickle, but not a torch checkpoint")
    torch.save({"w": torch.zeros(3)}, root / "whole.pth")
    data = (root / "whole.pth").read_bytes()
    add("truncated.pth", data[: len(data) // 2], "a damaged or truncated zip archive")
    zpath = root / "notes.pth"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("notes.txt", "hello")
    files["notes.pth"] = (zpath, "a zip archive, but not a torch checkpoint")
    add("fake.safetensors", b"not really safetensors", "not a safetensors file")
    return files


def _warm_import(cli) -> None:
    """Import what the commands import lazily, so timings below measure the command, not first imports."""
    cli("data", "info", "/nonexistent/warm-up")
    cli("eval", "iresnet18", "--bins", "/nonexistent/warm-up")


# --- usage -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["data"],
        ["data", "convert", "only_src"],
        ["data", "synth"],
        ["data", "synth", "o", "--pairs", "x"],
        ["models", "--format", "xml"],
        ["models", "convert-checkpoint", "in.pth"],
        ["eval"],
        ["eval", "m", "--bins"],
        ["eval", "m", "--ijb-target", "IJBX"],
        ["eval", "m", "--batch-size", "many"],
        ["eval", "m", "--not-an-option"],
    ],
    ids=lambda a: " ".join(a) or "bare",
)
def test_wrong_usage_is_one_line_pointing_at_help(cli, argv):
    line = one_error_line(cli(*argv))
    assert "--help" in line


@pytest.mark.parametrize(
    "argv, suggestion",
    [
        (["trian", "recipes/quickstart.yaml"], "did you mean 'train'?"),
        (["modles"], "did you mean 'models'?"),
        (["export", "hbu", "m"], "did you mean 'hub'?"),
        (["data", "covnert", "a", "b"], "did you mean 'convert'?"),
    ],
)
def test_misspelled_commands_suggest_the_closest(cli, argv, suggestion):
    line = one_error_line(cli(*argv), suggestion, "--help")
    assert "invalid choice" in line
    assert "did you mean" not in one_error_line(cli("xyz"))  # nothing close: no guess


# --- models ----------------------------------------------------------------------------------------------------------


def test_unknown_model_name_suggests_the_closest(cli, bins, tmp_path):
    line = one_error_line(
        cli("eval", "iresnet51_gwp", "--bins", bins, "--output-dir", tmp_path), "'iresnet51_gwp'", prog="facezoo eval"
    )
    assert "did you mean 'iresnet50_gwp'" in line and "facezoo models" in line
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(UnknownNameError, match="did you mean 'iresnet50_gwp'"):
        facezoo.models.create_model("iresnet51_gwp")
    line = one_error_line(cli("models", "iresnet51*"), "'iresnet51*'", prog="facezoo models")
    assert "shell patterns" in line


@pytest.mark.parametrize(
    "name",
    ["random.pth", "text.pth", "empty.pth", "list.pth", "garbage.pt", "truncated.pth", "notes.pth", "fake.safetensors"],
)
def test_file_that_is_no_checkpoint(cli, not_checkpoints, bins, tmp_path, name):
    path, says = not_checkpoints[name]
    # convert-checkpoint, which the messages suggest for refused pickles, must not crash on it
    out = tmp_path / "w.safetensors"
    if name != "fake.safetensors":
        one_error_line(cli("models", "convert-checkpoint", path, out), str(path), says, prog="facezoo models")
        assert not out.exists() and not list(tmp_path.iterdir())
    # eval --checkpoint: reported before any set is read
    line = one_error_line(
        cli("eval", "iresnet18", "--checkpoint", path, "--bins", tmp_path / "no_bins"),
        str(path),
        says,
        prog="facezoo eval",
    )
    assert "no_bins" not in line
    # and through timm's own loader
    with pytest.raises(CheckpointError, match=says):
        import timm

        timm.create_model("iresnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_missing_checkpoint_file_names_the_path(cli, tmp_path):
    missing = tmp_path / "runs" / "backbone.pth"
    one_error_line(
        cli("eval", "iresnet18", "--checkpoint", missing, "--bins", tmp_path),
        f"{missing}: no such checkpoint file",
        prog="facezoo eval",
    )
    one_error_line(
        cli("models", "convert-checkpoint", missing, tmp_path / "w.safetensors"),
        f"{missing}: no such checkpoint file",
        prog="facezoo models",
    )
    import timm

    with pytest.raises(MissingPathError, match=f"{missing}: no such checkpoint file"):
        timm.create_model("iresnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


def test_unreadable_torch_zip_is_explained_not_crashed(cli, tiny_model, tmp_path):
    """A zip that looks like torch.save's (data.pkl inside) but whose pickle is garbage: through timm's loader, for
    a facezoo model and for any other timm model, and through convert-checkpoint."""
    torch.save(tiny_model.state_dict(), tmp_path / "good.pth")
    with zipfile.ZipFile(tmp_path / "good.pth") as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(tmp_path / "bad.pth", "w") as z:
        for n, data in members.items():
            z.writestr(n, b"\x80\x02 not a pickle at all" if n.endswith("data.pkl") else data)
    bad = tmp_path / "bad.pth"
    with pytest.raises(CheckpointError, match=f"{bad}: not a readable torch checkpoint"):
        facezoo.models.create_model("test_resnet", checkpoint=bad)
    with pytest.raises(CheckpointError, match=f"{bad}: not a readable torch checkpoint"):
        facezoo.models.create_model("iresnet18", checkpoint=bad)
    line = one_error_line(
        cli("models", "convert-checkpoint", bad, tmp_path / "w.safetensors"), str(bad), prog="facezoo models"
    )
    assert "not a readable torch checkpoint" in line and "pickles Python objects" not in line


# --- eval ------------------------------------------------------------------------------------------------------------


def test_non_finite_model_output_names_the_set_and_the_images(cli, tiny_model, bins, tmp_path):
    from safetensors.torch import save_file

    nan = {
        k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v).contiguous()
        for k, v in tiny_model.state_dict().items()
    }
    save_file(nan, str(tmp_path / "nan.safetensors"))
    out = tmp_path / "out"
    r = cli(
        "eval",
        "test_resnet",
        "--checkpoint",
        tmp_path / "nan.safetensors",
        "--bins",
        bins,
        "--targets",
        "lfw",
        "--output-dir",
        out,
        "--quiet",
        "--device",
        "cpu",
    )
    line = one_error_line(r, "lfw: the embeddings of 24 of 24 images are not finite (NaN or Inf", prog="facezoo eval")
    assert "untrained or diverged" in line
    assert not out.exists()  # no 50.00% table written


def test_bins_without_targets_evaluates_and_lists_every_set(cli, bins, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="facezoo.eval.runner"):
        r = cli(
            "eval",
            "test_resnet",
            "--bins",
            bins,
            "--output-dir",
            out,
            "--quiet",
            "--batch-size",
            "24",
            "--device",
            "cpu",
        )
    assert r.rc == 0, r
    assert f"verification sets in {bins}: agedb_30, cfp_fp, lfw" in caplog.text
    doc = json.loads((out / "results.json").read_text())
    assert sorted(doc["verification"]) == ["agedb_30", "cfp_fp", "lfw"]
    assert "| AgeDB-30 |" in r.out and "| LFW |" in r.out


def test_bins_folder_empty_missing_or_a_file(cli, bins, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    one_error_line(
        cli("eval", "test_resnet", "--bins", tmp_path / "empty"),
        str(tmp_path / "empty"),
        "no verification sets in this folder",
        "lfw.bin",
        prog="facezoo eval",
    )
    one_error_line(
        cli("eval", "test_resnet", "--bins", tmp_path / "nope"),
        f"{tmp_path / 'nope'}: no such folder of verification sets",
        prog="facezoo eval",
    )
    one_error_line(
        cli("eval", "test_resnet", "--bins", tmp_path / "notes.txt"),
        "expected a folder of verification sets (a folder), found a file",
        prog="facezoo eval",
    )
    line = one_error_line(
        cli("eval", "test_resnet", "--bins", bins, "--targets", "lfw,cfp-fp"), "'cfp-fp'", prog="facezoo eval"
    )
    assert "found agedb_30, cfp_fp, lfw" in line and "did you mean 'cfp_fp'" in line
    one_error_line(cli("eval", "test_resnet", "--targets", "lfw"), "--targets", "--bins", prog="facezoo eval")
    one_error_line(
        cli("eval", "test_resnet", "--bins", bins, "--ijb", tmp_path / "IJBC"),
        str(tmp_path / "IJBC"),
        "no such IJB release folder",
        prog="facezoo eval",
    )
    one_error_line(
        cli("eval", "test_resnet", "--bins", bins, "--device", "gpu7"), "--device 'gpu7'", prog="facezoo eval"
    )


# --- data ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything asks the Hugging Face Hub."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr("facezoo.models.factory.check_hub_reachable", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", refuse)


@pytest.mark.parametrize(
    "path",
    [
        "faces_emore",
        "faces_emore/",
        "./faces_emore",
        "data/faces_emore/train.rec",
        "/nonexistent/faces_emore",
        "~/nonexistent-facezoo/faces",
        "lfw.bin",
        "x.parquet",
    ],
)
def test_data_info_on_a_missing_path_fails_at_once(cli, no_hub, path):
    _warm_import(cli)
    t0 = time.perf_counter()
    r = cli("data", "info", path)
    elapsed = time.perf_counter() - t0
    one_error_line(r, f"{path}: no such", prog="facezoo data")
    assert elapsed < 0.5, elapsed  # never a Hub lookup (and no_hub would have failed it)


def test_data_info_on_folders_and_files_that_hold_no_faces(cli, no_hub, tmp_path, not_checkpoints):
    (tmp_path / "empty").mkdir()
    one_error_line(
        cli("data", "info", tmp_path / "empty"),
        f"{tmp_path / 'empty'}: the folder is empty",
        "expected a Hugging Face dataset, a .rec, or identity folders",
        prog="facezoo data",
    )
    (tmp_path / "ids" / "bob").mkdir(parents=True)
    (tmp_path / "ids" / "bob" / "notes.txt").write_text("not an image")
    one_error_line(
        cli("data", "info", tmp_path / "ids"),
        f"{tmp_path / 'ids'}: no images",
        "<identity>/<image>.jpg",
        prog="facezoo data",
    )
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "train.rec").write_bytes(b"\0" * 64)
    one_error_line(
        cli("data", "info", tmp_path / "rec"), "train.idx: index file not found beside train.rec", prog="facezoo data"
    )
    one_error_line(
        cli("data", "info", not_checkpoints["random.pth"][0]), "not a dataset file", ".parquet", prog="facezoo data"
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello\n")  # datasets reads this as a 'text' dataset
    one_error_line(
        cli("data", "info", tmp_path / "notes"),
        f"{tmp_path / 'notes'}: no Image column among ['text']",
        prog="facezoo data",
    )
    (tmp_path / "bad.bin").write_bytes(b"garbage\n")
    one_error_line(
        cli("data", "info", tmp_path / "bad.bin"),
        f"{tmp_path / 'bad.bin'}: not a readable verification .bin pickle",
        prog="facezoo data",
    )


def test_data_info_describes_what_it_finds(cli, bins, tmp_path, make_face_records):
    make_face_records(tmp_path / "rec", num_identities=2, per_identity=2)
    r = cli("data", "info", tmp_path / "rec")
    assert r.rc == 0 and r.err == [], r
    assert json.loads(r.out) == {
        "path": str(tmp_path / "rec"),
        "type": "RecordIOFaces",
        "images": 4,
        "num_classes": 2,
        "image_shape": [3, 112, 112],
        "first_label": 0,
    }
    assert facezoo.data.describe_source(bins / "lfw.bin")["pairs"] == 12
    pairs = json.loads(cli("data", "info", bins / "agedb_30").out)
    assert pairs["pairs"] == 12 and pairs["type"].startswith("verification pairs") and pairs["image_shape"][0] == 3


def test_data_convert_and_synth_mistakes(cli, tmp_path, not_checkpoints):
    one_error_line(
        cli("data", "convert", tmp_path / "lfw.bin", tmp_path / "lfw_hf"),
        f"{tmp_path / 'lfw.bin'}: no such verification .bin file",
        prog="facezoo data",
    )
    one_error_line(
        cli("data", "convert", tmp_path / "faces.rec", tmp_path / "hf"),
        f"{tmp_path / 'faces.rec'}: no such RecordIO file",
        prog="facezoo data",
    )
    one_error_line(
        cli("data", "convert", "faces_emore", tmp_path / "out"),
        "faces_emore: no such file or folder",
        prog="facezoo data",
    )
    ckpt = not_checkpoints["text.pth"][0]
    one_error_line(cli("data", "synth", ckpt), f"{ckpt}: expected a folder", prog="facezoo data")
    one_error_line(cli("data", "synth", tmp_path / "s", "--identities", "0"), "must be >= 1", prog="facezoo data")
    assert not (tmp_path / "s").exists()


def test_a_typo_in_a_real_process_and_the_debug_switches(tmp_path):
    """Real exit codes and stderr: one line and code 2; FACEZOO_DEBUG=1 and --debug give the traceback instead."""
    plain = facezoo_process("data", "info", "faces_emore", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.splitlines() == [
        "facezoo data: error: faces_emore: no such file or folder (expected a "
        "training set: a .rec file or a folder with train.rec, a folder of identity "
        "folders, a Hugging Face dataset folder or .parquet file, a Hub id ORG/NAME, "
        "or 'synthetic')"
    ]
    debug = facezoo_process("data", "info", "faces_emore", env={"FACEZOO_DEBUG": "1"})
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "facezoo.errors.MissingPathError: faces_emore: no such file or folder" in debug.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_flag_raises_instead_of_one_line(cli, monkeypatch, where):
    argv = ["data", "info", "faces_emore"]
    with pytest.raises(MissingPathError, match="faces_emore: no such file or folder"):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])
    monkeypatch.setenv("FACEZOO_DEBUG", "1")
    with pytest.raises(UnknownNameError, match="iresnet51_gwp"):
        main(["eval", "iresnet51_gwp", "--bins", "x"])
    monkeypatch.setenv("FACEZOO_DEBUG", "0")
    one_error_line(cli(*argv), prog="facezoo data")


def test_a_bug_is_one_line_with_exit_code_1(cli, monkeypatch):
    def broken(path, split=None):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("facezoo.data.describe.describe_source", broken)
    r = cli("data", "info", "x")
    assert r.rc == 1 and len(r.err) == 1
    assert r.err[0] == (
        "facezoo data: internal error: ZeroDivisionError: division by zero (rerun with --debug for "
        "the traceback, and please report it)"
    )


# --- the Hugging Face Hub without a network ---------------------------------------------------------------------------


@pytest.fixture
def hub_at(monkeypatch):
    """``hub_at(url)``: point huggingface_hub (already imported here) at ``url`` for this test."""
    import huggingface_hub.constants

    def point(url: str) -> None:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    return point


@pytest.fixture
def silent_server():
    """A local TCP server that accepts connections and never answers (a network that hangs)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    srv.close()


@pytest.mark.parametrize("command", ["data info", "eval"])
def test_hub_id_without_network_fails_in_seconds(cli, hub_at, free_port, bins, command):
    hub_at(f"http://127.0.0.1:{free_port}")  # nothing listens there: connection refused, as offline
    argv = ["data", "info", "org/name"] if command == "data info" else ["eval", "hf-hub:org/name", "--bins", bins]
    cli(*argv)  # warm-up: first imports
    t0 = time.perf_counter()
    line = one_error_line(
        cli(*argv), "org/name: cannot reach the Hugging Face Hub", "HF_HUB_OFFLINE=1", prog=f"facezoo {argv[0]}"
    )
    assert time.perf_counter() - t0 < 5
    assert "Traceback" not in line
    with pytest.raises(HubError):
        facezoo.models.create_model("hf-hub:org/name")


def test_hub_that_never_answers_times_out(cli, hub_at, silent_server, monkeypatch):
    monkeypatch.setattr("facezoo.models.factory.HUB_TIMEOUT", 1.0)
    hub_at(silent_server)
    cli("data", "info", "org/name")  # warm-up
    t0 = time.perf_counter()
    one_error_line(cli("data", "info", "org/name"), "org/name: cannot reach the Hugging Face Hub", prog="facezoo data")
    assert time.perf_counter() - t0 < 6  # the timeout (1 s here, 10 s by default), not datasets' ~30 s of retries


@pytest.mark.parametrize(
    "argv", [["data", "info", "org/name"], ["eval", "hf-hub:org/name", "--bins", "BINS"]], ids=["data info", "eval"]
)
def test_hub_id_offline_with_an_empty_cache(tmp_path, bins, argv):
    argv = [str(bins) if a == "BINS" else a for a in argv]
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    proc = facezoo_process(*argv, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"facezoo {argv[0]}: error: org/name: HF_HUB_OFFLINE=1 and this ")
    assert "not in the local Hugging Face cache" in lines[0]
