"""AdaFace head: a margin that adapts to image quality through the embedding norm.

Kim, Jain, Liu, "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022; formulas as in the authors'
code (github.com/mk-minchul/AdaFace, ``head.py``). With z = clip(h * (||f|| - mean) / (std + eps), -1, 1) the
target becomes ``s * (cos(clip(theta - m*z, eps, pi - eps)) - (m + m*z))``: low-norm (hard, low quality)
samples get an ArcFace-like margin, high-norm ones a CosFace-like one.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from facezoo.losses.base import (
    MarginHead,
    check_inputs,
    check_norms,
    check_scale_and_margin,
    compute_dtype,
    scatter_targets,
)
from facezoo.losses.distributed import is_distributed, reduce_mean_std


class AdaFace(MarginHead):
    """AdaFace margin head; ``forward(cosine, labels, norms)`` with the norms before L2 normalization.

    Args:
        s: scale (64).
        m: margin (0.4).
        h: concentration of the norm-to-margin mapping (0.333: ~68% of z within [-0.333, 0.333]).
        t_alpha: EMA factor of the norm statistics: ``new = t_alpha * batch + (1 - t_alpha) * old``
            (the authors' configs use 0.01).
        eps: cosine clamp [-1 + eps, 1 - eps], angle clamp [eps, pi - eps] and std offset (1e-3).
        process_group: group over which the norm statistics are pooled when distributed (default: world).

    Every cosine is clamped to [-1 + eps, 1 - eps] as in the reference (also for rows whose class is on
    another shard, so a sharded run equals an unsharded one). Norms are clipped to [0.001, 100] and detached.
    The buffers ``batch_mean`` (initially 20) and ``batch_std`` (100) are in the state_dict, with the
    reference's names. Differences from the reference, on purpose: they are updated only in training mode
    (the reference also updates them in eval); under ``torch.distributed`` the batch mean and unbiased std are
    pooled over all ranks (the reference uses each rank's local batch), unless the caller passes
    ``global_batch=True`` because its rows already are the global batch (Partial FC does); a batch of one
    embedding leaves ``batch_std`` unchanged (the reference's unbiased std of one value is NaN, which would
    poison the EMA for good).
    """

    needs_norms = True

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
        *,
        process_group: Optional[Any] = None,
    ) -> None:
        super().__init__()
        check_scale_and_margin("AdaFace", s=s, m=m, h=h, t_alpha=t_alpha, eps=eps)
        if s <= 0:
            raise ValueError(f"AdaFace: scale s must be > 0, got {s}")
        if not 0 <= t_alpha <= 1:
            raise ValueError(f"AdaFace: t_alpha must be in [0, 1], got {t_alpha}")
        if not 0 < eps < 0.5:
            raise ValueError(f"AdaFace: eps must be in (0, 0.5), got {eps}")
        self.s, self.m, self.h, self.t_alpha, self.eps = float(s), float(m), float(h), float(t_alpha), float(eps)
        self.process_group = process_group
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}, eps={self.eps}"

    @torch.no_grad()
    def update_norm_stats(self, safe_norms: torch.Tensor, global_batch: bool = False) -> None:
        """EMA update of ``batch_mean`` / ``batch_std`` from clipped, detached norms."""
        if not global_batch and is_distributed(self.process_group):
            count, mean, std = reduce_mean_std(safe_norms, self.process_group)
        else:
            count = safe_norms.numel()
            mean = safe_norms.mean() if count else None
            std = safe_norms.std() if count >= 2 else None
        a = self.t_alpha
        if count >= 1:
            self.batch_mean.copy_(mean.to(self.batch_mean.dtype) * a + (1 - a) * self.batch_mean)
        if count >= 2:
            self.batch_std.copy_(std.to(self.batch_std.dtype) * a + (1 - a) * self.batch_std)

    def margin_scaler(self, safe_norms: torch.Tensor) -> torch.Tensor:
        """z = clip(h * (norm - mean) / (std + eps), -1, 1) with the current statistics."""
        mean = self.batch_mean.to(safe_norms.dtype)
        std = self.batch_std.to(safe_norms.dtype)
        return ((safe_norms - mean) / (std + self.eps) * self.h).clip(-1, 1)

    def forward(
        self,
        cosine: torch.Tensor,
        labels: torch.Tensor,
        norms: Optional[torch.Tensor] = None,
        *,
        target_cosine: Optional[torch.Tensor] = None,
        global_batch: bool = False,
    ) -> torch.Tensor:
        """Scaled logits [N, C]; ``norms`` [N] or [N, 1] are required (``target_cosine`` is not used)."""
        labels = check_inputs("AdaFace", cosine, labels)
        norms = check_norms("AdaFace", norms, cosine.shape[0])
        dtype = compute_dtype(cosine)
        x = cosine.to(dtype).clamp(-1 + self.eps, 1 - self.eps)
        safe_norms = norms.detach().to(dtype).clip(min=0.001, max=100)
        if self.training:
            self.update_norm_stats(safe_norms, global_batch)
        z = self.margin_scaler(safe_norms)
        logits = x * self.s
        rows = torch.where(labels != -1)[0]
        cols = labels[rows]
        zt = z[rows]
        theta = x[rows, cols].acos()
        theta_m = torch.clip(theta + self.m * zt * -1, min=self.eps, max=math.pi - self.eps)
        target = theta_m.cos() - (self.m + self.m * zt)
        return scatter_targets(logits, rows, cols, target * self.s)
