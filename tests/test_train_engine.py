"""Training engine features: mixed precision, accumulation, logs without duplicated steps, evaluation, fine-tuning."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from facezoo.train import Trainer, load_recipe
from facezoo.train.checkpoint import list_checkpoints

TINY = [
    "model.name=iresnet18_gwp",
    "model.embed_dim=32",
    "model.args={widths: [8, 8, 16, 16], img_size: 32}",
    "data.synthetic.identities=16",
    "data.synthetic.images_per_identity=4",
    "data.batch_size=16",
    "data.num_workers=0",
    "loss.s=16",
    "loss.m=0.3",
    "optim.lr=0.05",
    "train.epochs=2",
    "train.log_every=1",
    "train.tensorboard=false",
    "export.enabled=false",
]


def tiny(*extra: str):
    return load_recipe(None, TINY + list(extra))


@pytest.mark.parametrize("precision,accum", [("bf16", 1), ("fp16", 2), ("no", 2)])
def test_mixed_precision_and_accumulation_train(tmp_path, precision, accum):
    t = Trainer(
        tiny(f"train.mixed_precision={precision}", f"train.grad_accum={accum}", "loss.name=adaface"),
        tmp_path,
        progress=False,
    )
    before = t.backbone.conv1.weight.detach().clone()
    t.fit()
    assert t.step == 8 and not torch.equal(before, t.backbone.conv1.weight)
    assert t.plan.local_batch == 16 // accum
    if precision == "fp16":  # the first steps overflow at 2**16 and back off, skipped on every rank
        assert 0 < t.skipped < 8 and t.scaler.scale == 2.0**16 * 0.5**t.skipped
    else:
        assert t.skipped == 0
    log = (tmp_path / "train.log").read_text()
    losses = [float(m.group(1)) for m in re.finditer(r"step \d+/\d+ epoch \d+ loss (\S+)", log)]
    assert len(losses) == 8 and sum(math.isfinite(v) for v in losses) == 8 - t.skipped


def test_logs_have_no_duplicated_steps_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    extra = [
        "train.tensorboard=true",
        "eval.targets=[synthetic]",
        "eval.synthetic_pairs=20",
        "eval.every=2",
        "train.checkpoint_every=2",
    ]
    Trainer(tiny(*extra), tmp_path, progress=False).fit(stop_at=5)
    Trainer(tiny(*extra), tmp_path, resume="latest", progress=False).fit()
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]  # evaluated every 2 steps and at the end, once each
    assert all(0 <= float(r["synthetic_accuracy"]) <= 1 for r in rows)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and steps == list(range(1, 9))  # purge_step dropped the re-run steps
    assert [e.step for e in events.Scalars("eval/synthetic/accuracy")] == [2, 4, 6, 8]
    doc = (tmp_path / "eval.json").read_text()
    assert '"synthetic"' in doc and '"verification_average"' in doc


def test_finetune_from_a_file_with_frozen_stages_and_lower_backbone_lr(tmp_path):
    import timm

    base = timm.create_model("iresnet18_gwp", embed_dim=32, widths=(8, 8, 16, 16), img_size=32)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(tmp_path / "base.safetensors"))
    t = Trainer(
        tiny(
            f"model.pretrained={tmp_path / 'base.safetensors'}",
            "model.freeze=[conv1, bn1, layer1]",
            "optim.backbone_lr_scale=0.1",
            "data.synthetic.identities=20",
        ),
        tmp_path / "ft",
        progress=False,
    )
    assert torch.equal(t.backbone.layer2[0].conv1.weight, base.layer2[0].conv1.weight)  # started from the file
    lrs = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    assert lrs == pytest.approx({"backbone": 0.005, "partial_fc": 0.05})  # the backbone at 0.1 x optim.lr
    t.fit()
    after = load_file(str(list_checkpoints(tmp_path / "ft")[-1] / "backbone.safetensors"))
    for k in ("conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn1.running_var"):
        assert torch.equal(after[k], base.state_dict()[k]), k  # frozen: weights and BatchNorm statistics kept
    assert not torch.equal(after["layer2.0.conv1.weight"], base.state_dict()["layer2.0.conv1.weight"])
    assert t.num_classes == 20 and t.pfc.num_classes == 20  # new class centres for the new identities


def test_learning_rate_schedules():
    from facezoo.train.config import ScheduleConfig
    from facezoo.train.schedule import lr_factor

    poly = ScheduleConfig(name="polynomial", warmup_epochs=1)
    assert [lr_factor(s, 10, 2, poly) for s in (0, 1, 2, 6, 10)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    multi = ScheduleConfig(name="multistep", milestones=[12, 20, 24], gamma=0.1)  # AdaFace: per epoch
    assert [lr_factor(s * 100, 2600, 100, multi) for s in (0, 11, 12, 19, 20, 24, 25)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.001, 0.001]
    )
    assert lr_factor(1199, 2600, 100, multi) == 1.0  # constant within epoch 11
    cos = ScheduleConfig(name="cosine")
    assert lr_factor(5, 10, 5, cos, final=0.1) == pytest.approx(0.55)
