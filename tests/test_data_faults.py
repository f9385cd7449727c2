"""Faults in the data, with DataLoader workers and in conversion: skips add up over workers and resumes, a worker's
error is the same one line as without workers, and ``facezoo data convert`` keeps the class list and never copies a
bad image or record."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest
import torch
from torch.utils.data import DataLoader

from facezoo.cli import main, one_line
from facezoo.data import RecordIOFaces, count_skipped, encode_image, restore_skipped
from facezoo.data.recordio import write_face_records
from facezoo.errors import DataError
from facezoo.train.checkpoint import STATE_FILE

TINY = [
    "model.name=iresnet18_gwp",
    "model.embed_dim=32",
    "model.args={widths: [8, 8, 16, 16], img_size: 32}",
    "data.batch_size=16",
    "train.max_steps=2",
    "train.tensorboard=false",
    "export.enabled=false",
]
BAD = (3, 8, 13)  # unreadable records, never side by side (a skipped sample is replaced by the next one)


def _rec(folder: Path, n: int = 16, bad: Sequence[int] = BAD) -> Path:
    """A ``.rec`` of ``n`` 32x32 JPEG faces of 4 classes whose records ``bad`` hold bytes that are no image."""
    images = (torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    records = [(encode_image(im), i % 4) for i, im in enumerate(images)]
    for i in bad:
        records[i] = (b"not an image", i % 4)
    write_face_records(folder, records, insightface_header=False)
    return folder


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text("model:\n  name: iresnet18_gwp\noptim:\n  lr: 0.05\n")
    return p


def _error_lines(capsys) -> List[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ counts that add up
def test_skips_in_workers_are_counted_in_the_main_process(tmp_path):
    ds = RecordIOFaces(_rec(tmp_path / "rec"), on_error="skip")
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=lambda b: b)
    assert sum(len(b) for b in loader) == 16
    assert ds.skipped == len(BAD)  # read by the workers, seen here
    assert count_skipped(ds) == len(BAD)
    restore_skipped(ds, 10)
    assert ds.skipped == 10 and count_skipped(object()) == 0


def test_training_reports_the_skips_of_the_whole_run(recipe, tmp_path, capsys):
    """2 epochs of one step over 16 records with 3 bad ones, read by 2 workers, stopped and resumed in between:
    6 skips, in the log, TensorBoard and eval.json."""
    run = tmp_path / "run"
    argv = [
        "train",
        str(recipe),
        "--quiet",
        "--output-dir",
        str(run),
        *TINY,
        f"data.train={_rec(tmp_path / 'rec')}",
        "data.num_workers=2",
        "data.on_error=skip",
        "eval.targets=[synthetic]",
        "eval.synthetic_pairs=10",
        "train.tensorboard=true",
    ]
    assert main([*argv, "--stop-at-step", "1"]) == 0
    state = json.loads((run / "checkpoints" / "step_1" / STATE_FILE).read_text())
    assert state["skipped_records"] == len(BAD)
    assert main([*argv, "--resume", "latest"]) == 0
    assert json.loads((run / "eval.json").read_text())["skipped_records"] == 2 * len(BAD)
    assert "6 unreadable sample(s) skipped in this run" in (run / "train.log").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in run.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "data/skipped_records" in acc.Tags().get("scalars", []):
            values += [e.value for e in acc.Scalars("data/skipped_records")]
    assert values == [6.0]


@pytest.mark.slow
@pytest.mark.dist
def test_two_processes_sum_their_skips(recipe, tmp_path, free_port):
    """2 CPU processes (accelerate launch, gloo), each with 2 data workers, one epoch of one step: every bad
    record is read once by some worker of some process, and the total is the number of bad records."""
    from facezoo.train.sampler import BatchPlan

    per_rank = [
        sorted(set(next(BatchPlan(16, 16, 1, 2, r, 0).iterate(0, 1, 0, 0)).indices) & set(BAD)) for r in range(2)
    ]
    assert all(per_rank), per_rank  # both processes read bad records: the total needs the sum over ranks
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port), "--multi_gpu"]
    cmd += ["-m", "facezoo", "train", str(recipe), "--output-dir", str(run), "--quiet", *TINY, "train.max_steps=1"]
    cmd += [f"data.train={_rec(tmp_path / 'rec')}", "data.num_workers=2", "data.on_error=skip"]
    cmd += ["eval.targets=[synthetic]", "eval.synthetic_pairs=10"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "eval.json").read_text())["skipped_records"] == len(BAD)


# ------------------------------------------------------------------------------------------ one line from workers
def test_a_worker_error_keeps_its_one_line_message_and_type(tmp_path):
    ds = RecordIOFaces(_rec(tmp_path / "rec"))
    with pytest.raises(DataError) as direct:
        ds[3]
    with pytest.raises(DataError) as caught:
        list(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=lambda b: b))
    assert str(caught.value) == str(direct.value)
    assert "record key 3 at byte offset" in str(caught.value) and "\n" not in str(caught.value)
    assert "Traceback" not in str(caught.value) and len(str(caught.value)) < 300
    assert "in DataLoader worker process" in caught.value.worker_traceback
    assert "Traceback (most recent call last)" in caught.value.worker_traceback


def test_other_worker_errors_print_their_own_message():
    from torch._utils import ExceptionWrapper  # what a DataLoader worker sends back (a real worker: tests above)

    try:
        raise OSError("disk on fire")
    except OSError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(OSError) as caught:
        wrapped.reraise()
    assert "Caught OSError" in str(caught.value)  # what torch makes of it
    assert one_line(caught.value) == "disk on fire"


def test_train_with_workers_fails_with_the_same_line(recipe, tmp_path, capsys):
    rec = _rec(tmp_path / "rec")
    argv = ["train", str(recipe), "--quiet", *TINY, f"data.train={rec}"]
    lines = []
    for workers in (0, 2):
        assert main([*argv, "--output-dir", str(tmp_path / f"w{workers}"), f"data.num_workers={workers}"]) == 2
        # the failed run shut its workers down: they ignore SIGTERM, so one left alive would hang the exit
        assert multiprocessing.active_children() == []
        err = _error_lines(capsys)
        assert len(err) == 1, err
        lines.append(err[0])
    assert lines[0] == lines[1]
    assert lines[1].startswith("facezoo train: error: ") and re.search(r"record key (3|8|13) at byte offset", lines[1])
    assert "cannot decode image" in lines[1] and len(lines[1]) < 300 and "Caught" not in lines[1]


@pytest.mark.slow
def test_debug_shows_the_worker_traceback(recipe, tmp_path):
    rec = _rec(tmp_path / "rec")
    proc = subprocess.run(
        [sys.executable, "-m", "facezoo", "train", str(recipe), "--quiet", "--output-dir", str(tmp_path / "o")]
        + [*TINY, f"data.train={rec}", "data.num_workers=2", "--debug"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "in DataLoader worker process" in proc.stderr and "decode_rgb" in proc.stderr  # the worker's frames
    assert proc.stderr.rstrip().splitlines()[-1].startswith("facezoo.errors.DataError: ")
    assert re.search(r"record key (3|8|13) at byte offset", proc.stderr.rstrip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ conversion keeps labels
def _break_magic(rec: Path, key: int) -> int:
    """Overwrite the magic of record ``key`` of ``rec`` (a structurally bad record); returns its byte offset."""
    offsets = dict(line.split("\t") for line in rec.with_suffix(".idx").read_text().split("\n") if line)
    off = int(offsets[str(key)])
    with open(rec, "r+b") as f:
        f.seek(off)
        f.write(b"\0\0\0\0")
    return off


def _convert(cli_capsys, *argv: str):
    rc = main(["data", "convert", *map(str, argv), "--quiet"])
    out, err = cli_capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if line.strip()]


def test_convert_of_a_rec_with_bad_records_names_them_or_counts_them(tmp_path, capsys):
    from facezoo.data import HFFaces

    broken = _rec(tmp_path / "broken", bad=()) / "train.rec"
    off = _break_magic(broken, 8)  # a record without its magic
    rc, _, err = _convert(capsys, broken, tmp_path / "hf_broken")
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("facezoo data: error: ") and f"train.rec: record key 8 at byte offset {off}" in err[0]

    no_image = _rec(tmp_path / "no_image", bad=(3,)) / "train.rec"  # a record whose bytes are no image
    rc, _, err = _convert(capsys, no_image, tmp_path / "hf_no_image")
    assert rc == 2 and len(err) == 1 and "train.rec: record key 3 at byte offset" in err[0], err
    assert "cannot decode image" in err[0]

    _break_magic(no_image, 8)
    rc, out, err = _convert(capsys, no_image, tmp_path / "hf", "--on-error", "skip")
    assert rc == 0, err
    assert json.loads(out)["skipped"] == 2 and json.loads(out)["images"] == 14
    assert len(HFFaces(tmp_path / "hf")) == 14


def _folders(root: Path, empty_image: bool = False) -> Path:
    """Identity folders a (2 images), b (none: only a note), c (2 images; with ``empty_image`` one of them is zero
    bytes), d (1 image)."""
    images = (torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    for name, ks in (("a", (0, 1)), ("b", ()), ("c", (2, 3)), ("d", (4,))):
        (root / name).mkdir(parents=True)
        for k in ks:
            (root / name / f"{k}.png").write_bytes(encode_image(images[k], "png"))
    (root / "b" / "notes.txt").write_text("no faces here")
    if empty_image:
        (root / "c" / "3.png").write_bytes(b"")
    return root


def _same_samples(rec: RecordIOFaces, expected: list) -> None:
    assert [rec[i][1] for i in range(len(rec))] == [lab for _, lab in expected]
    assert all(torch.equal(rec[i][0], im) for i, (im, _) in enumerate(expected))


def test_info_training_and_conversion_agree_on_the_classes(tmp_path, capsys, caplog):
    from facezoo.data import ImageFolderFaces

    src = _folders(tmp_path / "faces")
    assert main(["data", "info", str(src)]) == 0
    info = json.loads(capsys.readouterr().out)
    train = ImageFolderFaces(src)
    assert info["num_classes"] == train.num_classes == 3 and info["empty_folders"] == 1
    assert "1 sub-folder(s) hold no image files (b) and are not classes" in caplog.text
    assert train.classes == ["a", "c", "d"] and train.targets == [0, 0, 1, 1, 2]
    rc, out, err = _convert(capsys, src, tmp_path / "rec")
    assert rc == 0, err
    assert json.loads(out)["num_classes"] == 3 and json.loads(out)["empty_folders"] == 1
    rec = RecordIOFaces(tmp_path / "rec")
    assert rec.num_classes == train.num_classes
    _same_samples(rec, [train[i] for i in range(len(train))])
    assert main(["data", "info", str(tmp_path / "rec")]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 3


def test_folder_conversion_refuses_or_counts_an_empty_image(tmp_path, capsys):
    from facezoo.data import ImageFolderFaces

    src = _folders(tmp_path / "faces", empty_image=True)
    rc, out, err = _convert(capsys, src, tmp_path / "rec")  # the zero-byte image is refused with its path
    assert rc == 2 and len(err) == 1 and f"{src / 'c' / '3.png'}: empty image data" in err[0], err
    assert not (tmp_path / "rec" / "train.rec").exists()  # nothing half-written left behind

    rc, out, err = _convert(capsys, src, tmp_path / "rec", "--on-error", "skip")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["skipped"] == 1 and summary["images"] == 4 and summary["num_classes"] == 3
    train = ImageFolderFaces(src)
    rec = RecordIOFaces(tmp_path / "rec")
    assert rec.num_classes == train.num_classes
    kept = [i for i in range(len(train)) if train.samples[i][0] != os.path.join("c", "3.png")]
    _same_samples(rec, [train[i] for i in kept])
    assert [train.targets[i] for i in kept] == [0, 0, 1, 2]
    assert all(len(rec.read_record(i)[1]) > 0 for i in range(len(rec)))
