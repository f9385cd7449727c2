"""Training engine: exact resume (in-process stop / resume, data workers 0 and 2, after SIGKILL), checkpoints, skips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from facezoo.train import Trainer, load_recipe
from facezoo.train.checkpoint import list_checkpoints

# a model and data small enough for a few CPU steps per second
TINY = [
    "model.name=iresnet18_gwp",
    "model.embed_dim=32",
    "model.args={widths: [8, 8, 16, 16], img_size: 32}",
    "data.train=synthetic",
    "data.synthetic.identities=24",
    "data.synthetic.images_per_identity=4",
    "data.batch_size=16",
    "data.num_workers=0",
    "loss.name=arcface",
    "loss.s=16",
    "loss.m=0.3",
    "loss.sample_rate=0.5",
    "optim.name=sgd",
    "optim.lr=0.05",
    "optim.clip_grad_norm=5",
    "schedule.name=polynomial",
    "schedule.warmup_epochs=0.5",
    "train.epochs=2",
    "train.checkpoint_every=3",
    "train.log_every=2",
    "train.tensorboard=false",
    "data.augment={flip: 0.5, crop: 0.2, photometric: 0.2, low_res: 0.2}",
    "export.enabled=false",
]


def tiny(*extra: str):
    return load_recipe(None, TINY + list(extra))


def final_weights(run: Path) -> dict:
    last = list_checkpoints(run)[-1]
    out = {f"backbone.{k}": v for k, v in load_file(str(last / "backbone.safetensors")).items()}
    for f in sorted((last / "partial_fc").glob("*.safetensors")):
        out.update({f"{f.stem}.{k}": v for k, v in load_file(str(f)).items()})
    out.update({f"optim.{k}": v for k, v in load_file(str(last / "backbone_optim.safetensors")).items()})
    return out


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the tiny recipe (12 steps: 6 per epoch)."""
    out = tmp_path_factory.mktemp("ref")
    Trainer(tiny(), out, progress=False).fit()
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_and_resume_is_bit_identical(reference, tmp_path, workers):
    run = tmp_path / "run"
    Trainer(tiny(f"data.num_workers={workers}"), run, progress=False).fit(stop_at=4)  # mid-epoch
    assert [p.name for p in list_checkpoints(run)] == ["step_3", "step_4"]
    Trainer(tiny(f"data.num_workers={workers}"), run, resume="latest", progress=False).fit()
    assert_identical(final_weights(run), final_weights(reference))
    # the margin head's state and the PFC momentum came back too
    assert any(k.endswith("optim.momentum_buffer") for k in final_weights(run))


def test_checkpoints_are_complete_and_pruned(reference):
    names = [p.name for p in list_checkpoints(reference)]
    assert names == ["step_6", "step_9", "step_12"]  # keep_last 3 of 3, 6 (epoch end), 9, 12
    for p in list_checkpoints(reference):
        assert {f.name for f in p.iterdir()} == {
            "backbone.safetensors",
            "backbone_optim.safetensors",
            "manifest.json",
            "partial_fc",
            "rng",
            "trainer_state.json",
        }
    assert not [p for p in (reference / "checkpoints").iterdir() if p.name.startswith(".")]
    for f in ("recipe.yaml", "train.log"):
        assert (reference / f).stat().st_size > 0
    assert load_recipe(reference / "recipe.yaml").model.embed_dim == 32  # the resolved recipe loads back


def test_resume_refuses_another_run(reference, tmp_path):
    from facezoo.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"num_classes: checkpoint 24, recipe 30.*model.pretrained="):
        Trainer(
            tiny("data.synthetic.identities=30"),
            tmp_path,
            resume=str(reference / "checkpoints" / "step_12"),
            progress=False,
        )
    with pytest.raises(CheckpointError, match=r"embed_dim: checkpoint 32, recipe 64"):
        Trainer(tiny("model.embed_dim=64"), tmp_path, resume=str(reference), progress=False)


def test_nan_steps_are_skipped_and_too_many_stop(tmp_path, monkeypatch):
    from facezoo.train import TrainingError

    trainer = Trainer(tiny("train.max_bad_steps=3"), tmp_path / "a", progress=False)
    forward = trainer.pfc.forward
    calls = {"n": 0}

    def sometimes_nan(emb, labels):
        calls["n"] += 1
        loss = forward(emb, labels)
        return loss * float("nan") if calls["n"] in (2, 5) else loss

    monkeypatch.setattr(trainer.pfc, "forward", sometimes_nan)
    before = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    trainer.fit()
    assert trainer.skipped == 2 and trainer.step == 12
    assert "non-finite loss or gradient" in (tmp_path / "a" / "train.log").read_text()
    assert any(not torch.equal(before[k], v) for k, v in trainer.backbone.state_dict().items())

    trainer = Trainer(tiny("train.max_bad_steps=3"), tmp_path / "b", progress=False)
    monkeypatch.setattr(trainer.pfc, "forward", lambda emb, labels: forward(emb, labels) * float("nan"))
    with pytest.raises(TrainingError, match=r"3 steps in a row .*train.max_bad_steps=3.*last good checkpoint is"):
        trainer.fit()
    assert trainer.step == 3 and list_checkpoints(tmp_path / "b") == []  # no bad state was saved


def _recipe_file(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text("model: {name: iresnet18_gwp}\n")
    return p


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
    recipe = _recipe_file(tmp_path)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "facezoo", "train", str(recipe), "--output-dir", str(run), "--quiet", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "checkpoints" / "step_6").is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list_checkpoints(run), "no checkpoint before the kill"
    done = subprocess.run(cmd + ["--resume", "latest"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_identical(final_weights(run), final_weights(reference))


def test_sigterm_writes_a_checkpoint_and_exits_nonzero(tmp_path):
    recipe = _recipe_file(tmp_path)
    run = tmp_path / "term"
    cmd = [
        sys.executable,
        "-m",
        "facezoo",
        "train",
        str(recipe),
        "--output-dir",
        str(run),
        "--quiet",
        *TINY,
        "train.checkpoint_every=0",
        "train.epochs=50",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    log = run / "train.log"
    deadline = time.time() + 240
    while time.time() < deadline and "step 4/" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    steps = [int(p.name.split("_")[1]) for p in list_checkpoints(run)]
    # the step the signal stopped at, after any epoch-end checkpoints (6 steps an epoch) a fast machine reached first
    assert 4 <= steps[-1] < 50 * 6 and all(s % 6 == 0 for s in steps[:-1]), steps
    assert f"stopped by SIGTERM at step {steps[-1]}/300" in err and "--resume latest" in err
    assert len([line for line in err.splitlines() if line.startswith("facezoo train:")]) == 1
