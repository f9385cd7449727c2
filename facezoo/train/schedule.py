"""Learning-rate schedules as pure functions of the optimizer step (so a resumed run needs only the step).

* ``polynomial`` -- insightface's ``PolynomialLRWarmup``: linear warmup from 0, then ``(1 - progress) ** power``
  (power 1: linear decay to 0), stepped every iteration;
* ``multistep`` -- AdaFace's ``MultiStepLR``: ``lr * gamma ** k`` after the k-th milestone epoch, constant within an
  epoch;
* ``cosine`` -- warmup, then half a cosine from ``lr`` to ``min_lr``;
* ``constant`` -- warmup, then ``lr``.

Epochs are measured in steps as ``total_steps / train.epochs``, so with ``train.max_steps`` the whole schedule
(warmup, milestones) is laid out over those steps. The factor multiplies each parameter group's base learning
rate (the backbone's may be scaled, ``optim.backbone_lr_scale``); :func:`create_scheduler` wraps it in
``torch.optim.lr_scheduler.LambdaLR``, stepped once per optimizer step (it is not given to Accelerate, whose
prepared schedulers step once per process).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from facezoo.train.config import ScheduleConfig

__all__ = ["lr_factor", "make_lr_factor", "create_scheduler"]


def lr_factor(step: int, total_steps: int, epoch_steps: float, cfg: ScheduleConfig, final: float = 0.0) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based) of ``total_steps`` (``final``: the cosine's
    end value, ``min_lr / lr``)."""
    warmup = int(round(cfg.warmup_epochs * epoch_steps))
    if warmup > 0 and step < warmup:
        return step / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "multistep":
        epoch = math.floor(step / epoch_steps + 1e-9) if epoch_steps > 0 else 0
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if cfg.name == "polynomial":
        return (1.0 - progress) ** cfg.power
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_lr_factor(total_steps: int, epochs: int, cfg: ScheduleConfig, base_lr: float) -> Callable[[int], float]:
    """``step -> factor`` for a run of ``total_steps`` steps over ``epochs`` epochs."""
    epoch_steps = total_steps / max(epochs, 1)
    final = min(cfg.min_lr / base_lr, 1.0) if base_lr > 0 else 0.0

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, epoch_steps, cfg, final)

    return factor


def create_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, epochs: int, cfg: ScheduleConfig, base_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule as a ``LambdaLR`` over every parameter group of ``optimizer`` (step it once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_factor(total_steps, epochs, cfg, base_lr))
