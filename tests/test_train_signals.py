"""Faults never lose training: SIGTERM / SIGINT to a whole process group (main process, data workers, launcher and
ranks) stop at an agreed step with its checkpoint and exit 143 / 130, and ``--resume latest`` ends bit-identical to
an uninterrupted run; a stop during the last step keeps that step; the loop reads the loss only for log lines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from facezoo.train import Trainer, TrainingInterrupted, load_recipe
from facezoo.train.checkpoint import list_checkpoints
from facezoo.train.data import ignore_stop_signals, stop_signals_blocked

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
    "train.checkpoint_every=0",
    "train.log_every=1",
    "train.tensorboard=false",
    "data.augment={flip: 0.5, crop: 0.2}",
    "export.enabled=false",
]  # 96 images: 6 steps an epoch, 12 in all


def tiny(*extra: str):
    return load_recipe(None, TINY + list(extra))


def final_weights(run: Path) -> dict:
    """The newest checkpoint's backbone, its optimizer state and every Partial FC shard."""
    last = list_checkpoints(run)[-1]
    out = {f"backbone.{k}": v for k, v in load_file(str(last / "backbone.safetensors")).items()}
    out.update({f"optim.{k}": v for k, v in load_file(str(last / "backbone_optim.safetensors")).items()})
    for f in sorted((last / "partial_fc").glob("*.safetensors")):
        out.update({f"{f.stem}.{k}": v for k, v in load_file(str(f)).items()})
    return out


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def train_cmd(run: Path, *extra: str, launcher: List[str] = ()) -> List[str]:
    recipe = run.parent / "tiny.yaml"
    recipe.write_text("model: {name: iresnet18_gwp}\n")
    prog = list(launcher) or [sys.executable]
    return [*prog, "-m", "facezoo", "train", str(recipe), "--output-dir", str(run), "--quiet", *TINY, *extra]


def accelerate_launch(port: int) -> List[str]:
    """``accelerate launch`` of 2 CPU processes over gloo (as tests/test_train_dist.py)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "--multi_gpu",
    ]


ENV = dict(os.environ, PYTHONUNBUFFERED="1")  # the threads of this process: the same float sums as the reference
DIST_ENV = dict(ENV, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def kill_group_after(cmd: List[str], run: Path, after_step: int, env: dict = ENV) -> subprocess.Popen:
    """Start ``cmd`` as a new session, wait for ``step <after_step>/`` in train.log, SIGTERM the whole group."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    log, deadline = run / "train.log", time.time() + 300
    while time.time() < deadline and f"step {after_step}/" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    return proc


def stopped_steps(err: str) -> List[int]:
    """The step of every 'stopped by SIGTERM' line (one per process); each names a checkpoint that exists."""
    found = re.findall(r"facezoo train: stopped by SIGTERM at step (\d+)/12: checkpoint (\S+);", err)
    for _, path in found:
        assert Path(path).is_dir(), path
    return [int(step) for step, _ in found]


# ------------------------------------------------------------------------------------------------ data workers
class _SignalState(Dataset):
    """Each item: the worker's SIGTERM / SIGINT dispositions and whether SIGTERM is still blocked there."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        time.sleep(0.05)
        blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        return torch.tensor(
            [
                signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
                signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                blocked,
            ]
        )


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_data_workers_ignore_stop_signals_and_keep_serving():
    loader = DataLoader(_SignalState(), batch_size=1, num_workers=2, worker_init_fn=ignore_stop_signals)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with stop_signals_blocked():
        it = iter(loader)
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before  # the main thread's mask is back
    first = next(it)
    for w in it._workers:  # what `kill -TERM -PGID` does to them
        os.kill(w.pid, signal.SIGTERM)
        os.kill(w.pid, signal.SIGINT)
    rows = torch.cat([first] + list(it))
    assert rows.shape == (8, 3)
    assert rows[:, :2].all() and not rows[:, 2].any()  # ignored, and no longer blocked


# ------------------------------------------------------------------------------------------------ the main process
def test_repeated_stop_signals_do_not_abort(monkeypatch):
    t = Trainer.__new__(Trainer)  # the handler needs only the stop state and the step
    t._stop_signal, t.step = 0, 3
    previous = signal.getsignal(signal.SIGINT)
    try:
        t._on_signal(signal.SIGTERM, None)
        t._on_signal(signal.SIGTERM, None)  # a launcher forwarding what the group already got
        t._on_signal(signal.SIGINT, None)  # at once: not a person's second Ctrl-C
        assert t._stop_signal == signal.SIGTERM
        t._stop_time -= 5
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C later: stop now
            t._on_signal(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_stop_during_the_last_step_keeps_it(tmp_path):
    extra = ["train.max_steps=3", "eval.targets=[synthetic]", "eval.synthetic_pairs=20", "export.enabled=true"]
    trainer = Trainer(tiny(*extra), tmp_path, progress=False)
    forward = trainer.pfc.forward

    def ctrl_c_in_the_last_step(emb, labels):
        if trainer.step == trainer.total_steps - 1:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(emb, labels)

    trainer.pfc.forward = ctrl_c_in_the_last_step
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGINT at step 3/3: checkpoint ") as info:
        trainer.fit()
    assert info.value.signum == signal.SIGINT
    named = Path(re.search(r"checkpoint (\S+);", str(info.value)).group(1))
    assert named.name == "step_3" and named.is_dir() and list_checkpoints(tmp_path)[-1] == named
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "export").exists()

    resumed = Trainer(tiny(*extra), tmp_path, resume="latest", progress=False)
    assert resumed.step == 3
    resumed.fit()  # no step left: the final evaluation and the export
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "export" / "config.json").is_file()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_3"]


def test_the_loss_and_gradient_norm_are_read_only_for_log_lines(tmp_path, monkeypatch):
    trainer = Trainer(tiny("train.log_every=100", "train.max_steps=4"), tmp_path, progress=False)  # one log line
    reads = {"n": 0}
    for name in ("__float__", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, _original=original):
            if self.is_floating_point():
                reads["n"] += 1
            return _original(self)

        monkeypatch.setattr(torch.Tensor, name, counted)
    trainer.fit()
    lines = re.findall(r"step \d+/4 epoch", (tmp_path / "train.log").read_text())
    assert len(lines) == 1 and reads["n"] <= 2, reads  # the line's mean loss and gradient norm, not 2 per step


# ------------------------------------------------------------------------------------------------ process groups
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-process run of the tiny recipe (12 steps)."""
    out = tmp_path_factory.mktemp("ref")
    Trainer(tiny(), out, progress=False).fit()
    return out


@pytest.mark.slow
def test_sigterm_to_the_process_group_then_resume_is_bit_identical(reference, tmp_path):
    run = tmp_path / "run"
    cmd = train_cmd(run, "data.num_workers=2")
    proc = kill_group_after(cmd, run, 3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "internal error" not in err and "Traceback" not in err, err[-3000:]
    (step,) = stopped_steps(err)
    assert 3 <= step <= 12 and list_checkpoints(run)[-1].name == f"step_{step}"

    done = subprocess.run(cmd + ["--resume", "latest"], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_identical(final_weights(run), final_weights(reference))


@pytest.mark.slow
@pytest.mark.dist
def test_sigterm_to_accelerate_launch_stops_every_rank_at_one_step(tmp_path, free_port):
    launcher = accelerate_launch(free_port)
    ref = tmp_path / "ref"
    done = subprocess.run(train_cmd(ref, launcher=launcher), capture_output=True, text=True, timeout=300, env=DIST_ENV)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "run"
    cmd = train_cmd(run, "data.num_workers=2", launcher=launcher)
    proc = kill_group_after(cmd, run, 3, DIST_ENV)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "internal error" not in err, err[-3000:]
    steps = stopped_steps(err)
    assert len(steps) == 2 and steps[0] == steps[1], err[-3000:]  # both ranks, at the same step
    last = list_checkpoints(run)[-1]
    assert last.name == f"step_{steps[0]}" and len(list((last / "partial_fc").glob("*.safetensors"))) == 2

    done = subprocess.run(cmd + ["--resume", "latest"], capture_output=True, text=True, timeout=300, env=DIST_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_identical(final_weights(run), final_weights(ref))
