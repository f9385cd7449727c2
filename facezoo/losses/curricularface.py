"""CurricularFace head: ArcFace margin on the target plus curriculum re-weighting of hard negatives.

Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face Recognition", CVPR 2020; formulas
as in the authors' code (github.com/HuangYG123/CurricularFace, ``head/metrics.py``). The target becomes
``cos(theta + m)`` (``cos(theta) - m*sin(m)`` past pi - m); a negative whose cosine exceeds the row's
``cos(theta_y + m)`` is a hard example and becomes ``cos * (t + cos)``, where t is an EMA of the mean target
cosine, so hard negatives weigh little early in training and more as t grows.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from facezoo.losses.base import (
    MarginHead,
    angular_margin,
    apply_overflow,
    check_inputs,
    check_overflow,
    check_scale_and_margin,
    compute_dtype,
    scatter_targets,
)
from facezoo.losses.distributed import is_distributed, reduce_mean_std


class CurricularFace(MarginHead):
    """CurricularFace margin head.

    Args:
        s: scale (64).
        m: additive angular margin in radians (0.5).
        t_alpha: EMA factor of the mean target cosine t (the reference's fixed 0.01).
        straight_through: True (the default of every facezoo head, insightface's ArcFace gradient) back-propagates
            the target as an identity; False gives the exact gradient of cos(theta + m) (the reference's), kept
            finite at cosine = +-1.
        overflow: past pi - m, ``"threshold"`` (default, the reference: cos(theta) - m*sin(m)), ``"easy"`` or
            ``"wrap"`` (see ``facezoo.losses.base.OVERFLOW_MODES``).
        process_group: group over which the mean target cosine is pooled when distributed (default: world).

    The buffer ``t`` (initially 0, the reference's name) is in the state_dict. It is updated only in training
    mode (the reference also updates it in eval) and, under ``torch.distributed``, from the mean over all
    ranks unless ``global_batch=True``. Hard negatives are found by comparing with the row's own target, so rows
    whose class is on another shard need ``target_cosine``; Partial FC provides it.
    """

    needs_target_cosine = True

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.5,
        t_alpha: float = 0.01,
        *,
        straight_through: bool = True,
        overflow: str = "threshold",
        process_group: Optional[Any] = None,
    ) -> None:
        super().__init__()
        check_scale_and_margin("CurricularFace", s=s, m=m, t_alpha=t_alpha)
        if s <= 0:
            raise ValueError(f"CurricularFace: scale s must be > 0, got {s}")
        if not 0 <= m < math.pi:
            raise ValueError(f"CurricularFace: m must be in [0, pi), got {m}")
        if not 0 <= t_alpha <= 1:
            raise ValueError(f"CurricularFace: t_alpha must be in [0, 1], got {t_alpha}")
        self.s, self.m, self.t_alpha = float(s), float(m), float(t_alpha)
        self.straight_through = bool(straight_through)
        self.overflow = check_overflow("CurricularFace", overflow)
        self.process_group = process_group
        self.register_buffer("t", torch.zeros(1))

    def extra_repr(self) -> str:
        return (
            f"s={self.s}, m={self.m}, t_alpha={self.t_alpha}, straight_through={self.straight_through}, "
            f"overflow={self.overflow!r}"
        )

    @torch.no_grad()
    def update_t(self, target_cosine: torch.Tensor, global_batch: bool = False) -> None:
        """EMA update of ``t`` with the batch mean of the target cosines."""
        if not global_batch and is_distributed(self.process_group):
            count, mean, _ = reduce_mean_std(target_cosine, self.process_group)
        else:
            count = target_cosine.numel()
            mean = target_cosine.mean() if count else None
        if count:
            self.t.copy_(mean.to(self.t.dtype) * self.t_alpha + (1 - self.t_alpha) * self.t)

    def forward(
        self,
        cosine: torch.Tensor,
        labels: torch.Tensor,
        norms: Optional[torch.Tensor] = None,
        *,
        target_cosine: Optional[torch.Tensor] = None,
        global_batch: bool = False,
    ) -> torch.Tensor:
        """Scaled logits [N, C]; ``target_cosine`` [N] is required when some labels are -1."""
        labels = check_inputs("CurricularFace", cosine, labels)
        x = cosine.to(compute_dtype(cosine)).clamp(-1, 1)
        n = x.shape[0]
        rows = torch.where(labels != -1)[0]
        cols = labels[rows]
        with torch.no_grad():
            if target_cosine is None:
                if rows.numel() != n:
                    raise ValueError(
                        "CurricularFace: some labels are -1 (class on another shard): pass target_cosine [N], "
                        "the cosine of every row with its own class (facezoo.losses.PartialFC does)"
                    )
                tc = x[rows, cols]
            else:
                if target_cosine.reshape(-1).shape[0] != n:
                    raise ValueError(
                        f"CurricularFace: target_cosine must have N = {n} values, "
                        f"got shape {tuple(target_cosine.shape)}"
                    )
                tc = target_cosine.detach().reshape(-1).to(x.dtype).clamp(-1, 1)
            if self.training:
                self.update_t(tc, global_batch)
            hard = x > angular_margin(tc, self.m).unsqueeze(1)
        t = self.t.to(x.dtype)
        logits = torch.where(hard, x * (t + x), x) * self.s
        pos = x[rows, cols]
        target = apply_overflow(angular_margin(pos, self.m, 1.0, self.straight_through), pos, self.m, self.overflow)
        return scatter_targets(logits, rows, cols, target * self.s)
