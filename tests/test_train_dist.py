"""Elastic resume: 2 -> 1 and 1 -> 2 CPU processes (accelerate launch, gloo) re-shard Partial FC and its momentum,
keep the global batch and continue the interrupted epoch at the same sample."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from facezoo.train import Trainer, load_recipe
from facezoo.train.checkpoint import read_trainer_state
from facezoo.train.sampler import BatchPlan, epoch_permutation

TINY = [
    "model.name=iresnet18_gwp",
    "model.embed_dim=32",
    "model.args={widths: [8, 8, 16, 16], img_size: 32}",
    "data.synthetic.identities=25",
    "data.synthetic.images_per_identity=4",
    "data.batch_size=16",
    "data.num_workers=0",
    "loss.name=adaface",
    "loss.s=16",
    "optim.lr=0.05",
    "optim.no_weight_decay_on_bn=true",
    "schedule.name=multistep",
    "schedule.milestones=[1]",
    "train.epochs=2",
    "train.checkpoint_every=0",
    "train.tensorboard=false",
    "export.enabled=false",
]  # 100 images: 6 steps of 16 per epoch (4 left out), 25 classes (13 + 12 on two ranks)

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, run: Path, *extra: str) -> None:
    recipe = run.parent / "tiny.yaml"
    recipe.write_text("model: {name: iresnet18_gwp}\n")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_port()),
    ]
    cmd += ["--multi_gpu"] if processes > 1 else ["--cpu"]
    cmd += ["-m", "facezoo", "train", str(recipe), "--output-dir", str(run), "--quiet", *TINY, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def shards(step_dir: Path) -> dict:
    """The full class-centre matrix and momentum rebuilt from a checkpoint's shards, in class order."""
    files = sorted((step_dir / "partial_fc").glob("*.safetensors"))
    parts = sorted((load_file(str(f)) for f in files), key=lambda sd: int(sd["shard_spec"][3]))
    return {
        "world": len(files),
        "weight": torch.cat([p["weight"] for p in parts]),
        "momentum": torch.cat([p["optim.momentum_buffer"] for p in parts]),
        "ada_mean": parts[0]["margin_loss.batch_mean"],
    }


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_elastic_resume_reshards_and_continues_the_epoch(tmp_path, before, after):
    run = tmp_path / "run"
    launch(before, run, "--stop-at-step", "4")  # mid-epoch 0: 64 of its 100 samples used
    saved = shards(run / "checkpoints" / "step_4")
    assert saved["world"] == before
    state = read_trainer_state(run / "checkpoints" / "step_4")
    assert (state["epoch"], state["offset"], state["world_size"]) == (0, 64, before)
    keep = tmp_path / "before"
    shutil.copytree(run / "checkpoints" / "step_4", keep)

    # resume on the other process count and stop at once: the re-written checkpoint holds the same classes
    launch(after, run, "--resume", "latest", "--stop-at-step", "4")
    resharded = shards(run / "checkpoints" / "step_4")
    assert resharded["world"] == after
    for k in ("weight", "momentum", "ada_mean"):
        assert torch.equal(resharded[k], saved[k]), k
    assert torch.equal(
        load_file(str(run / "checkpoints/step_4/backbone.safetensors"))["conv1.weight"],
        load_file(str(keep / "backbone.safetensors"))["conv1.weight"],
    )

    # the resumed run reads the rest of epoch 0 from sample 64, then epoch 1: every sample of the epoch once
    trainer = Trainer(load_recipe(None, TINY), run, resume="latest", progress=False)
    assert (trainer.step, trainer.epoch, trainer.offset) == (4, 0, 64)
    first = next(trainer.plan.iterate(trainer.step, trainer.total_steps, trainer.epoch, trainer.offset))
    assert first.indices == epoch_permutation(100, 0, 0)[64:80].tolist()

    launch(after, run, "--resume", "latest")  # to the end
    assert read_trainer_state(run / "checkpoints" / "step_12")["world_size"] == after


def test_plan_uses_every_sample_of_an_epoch_once_across_a_world_size_change():
    n, batch, seed = 100, 16, 3
    used = []
    two = [BatchPlan(n, batch, 1, 2, r, seed) for r in range(2)]
    for mb in two[0].iterate(0, 4, 0, 0):  # 4 steps on 2 ranks
        used += mb.indices + two[1].micro_indices(mb.epoch, mb.offset, mb.micro)
    one = BatchPlan(n, batch, 2, 1, 0, seed)  # then 1 rank with 2 micro-batches per step
    for mb in one.iterate(4, 6, 0, 64):
        used += mb.indices
    assert sorted(used) == sorted(epoch_permutation(n, seed, 0)[:96].tolist()) and len(set(used)) == 96
    assert one.position_after(0, 80) == (1, 0)
