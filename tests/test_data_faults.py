"""Faults in the data, with DataLoader workers and in conversion: skips add up over workers and resumes, a worker's
error is the same one line as without workers, and ``facezoo data convert`` keeps the class list and never copies a
bad image or record."""

from __future__ import annotations

import json
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
    assert ds.skipped == count_skipped(ds) == len(BAD)  # read by the workers, seen here
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
    state = json.loads(next((run / "checkpoints").glob("step_1/*.json")).read_text())
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
