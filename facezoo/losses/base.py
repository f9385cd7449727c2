"""Shared contract and numerics of the margin heads.

A margin head maps cosine logits [N, C] (values in [-1, 1]) and labels [N] to scaled logits [N, C] for a
softmax cross-entropy applied outside. A label of -1 means "this row's class is not among these C columns"
(Partial FC shards the classes over ranks): such a row only gets the scale (plus any change a head applies
to every non-target cosine). Half-precision inputs are computed and returned in float32.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# sin(theta) is bounded below by this in exact gradients, so d cos(m1*theta + m2) / d cos(theta) stays finite
# at cos(theta) = +-1 (where the true derivative is infinite): |gradient| <= m1 / SIN_EPS. It only acts for
# theta < 0.01 rad (cos > 0.99995), and keeps s * gradient within float16 range.
SIN_EPS = 1e-2


class MarginHead(nn.Module):
    """Base class of facezoo's margin heads (see the module docstring for the contract).

    Attributes that Partial FC reads: ``needs_norms`` (forward needs the embedding norms before L2
    normalization), ``needs_target_cosine`` (rows whose class is on another shard need their target cosine).
    """

    needs_norms: ClassVar[bool] = False
    needs_target_cosine: ClassVar[bool] = False

    def forward(
        self,
        cosine: torch.Tensor,
        labels: torch.Tensor,
        norms: Optional[torch.Tensor] = None,
        *,
        target_cosine: Optional[torch.Tensor] = None,
        global_batch: bool = False,
    ) -> torch.Tensor:
        """Scaled logits [N, C].

        Args:
            cosine: cosine similarities [N, C] between normalized embeddings and class centers.
            labels: [N] class column in ``cosine``, or -1 when the row's class is not in these columns.
            norms: embedding norms before L2 normalization, [N] or [N, 1] (heads with ``needs_norms``).
            target_cosine: [N] cosine of every row with its own class, also for -1 rows (heads with
                ``needs_target_cosine``; Partial FC provides it).
            global_batch: True when the rows already are the global batch of all ranks (Partial FC), so batch
                statistics must not be all-reduced again.
        """
        raise NotImplementedError

    def regularizer(self, norms: torch.Tensor) -> Optional[torch.Tensor]:
        """Extra loss term on the embedding norms to add to the cross-entropy (MagFace); None for most heads."""
        return None


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half inputs, the input dtype otherwise (float64 stays float64)."""
    return torch.promote_types(t.dtype, torch.float32)


def check_inputs(head: str, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate shapes and label range; return labels as a 1-D int64 tensor."""
    if cosine.dim() != 2:
        raise ValueError(f"{head}: cosine must have shape [N, C], got {tuple(cosine.shape)}")
    if not cosine.is_floating_point():
        raise TypeError(f"{head}: cosine must be a floating-point tensor, got {cosine.dtype}")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels.view(-1)
    if labels.dim() != 1 or labels.shape[0] != cosine.shape[0]:
        raise ValueError(
            f"{head}: labels must have shape [N] (or [N, 1]) with N = {cosine.shape[0]}, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        raise TypeError(f"{head}: labels must be integers, got {labels.dtype}")
    labels = labels.long()
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi >= cosine.shape[1]:
            raise ValueError(
                f"{head}: labels must be in [0, {cosine.shape[1] - 1}] or -1 (class on another shard), "
                f"got values in [{lo}, {hi}]"
            )
    return labels


def check_norms(head: str, norms: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """Validate embedding norms given as [N] or [N, 1]; return them as [N]."""
    if norms is None:
        raise ValueError(f"{head}: needs the embedding norms before L2 normalization: forward(cosine, labels, norms)")
    if norms.dim() == 2 and norms.shape[1] == 1:
        norms = norms.view(-1)
    if norms.dim() != 1 or norms.shape[0] != n:
        raise ValueError(f"{head}: norms must have shape [N] or [N, 1] with N = {n}, got {tuple(norms.shape)}")
    return norms


def check_scale_and_margin(head: str, **values: float) -> None:
    """Refuse non-finite hyper-parameters with a message naming the head and the value."""
    for name, value in values.items():
        if not math.isfinite(float(value)):
            raise ValueError(f"{head}: {name} must be finite, got {value}")


def safe_sin(cos_theta: torch.Tensor, eps: float = SIN_EPS) -> torch.Tensor:
    """sin(arccos(c)) computed as sqrt((1 - c)(1 + c)), bounded below by ``eps``."""
    c = cos_theta.clamp(-1.0, 1.0)
    return ((1.0 - c) * (1.0 + c)).clamp_min(0.0).sqrt().clamp_min(eps)


class _AngularMargin(torch.autograd.Function):
    """cos(m1 * arccos(t) + m2) with a finite gradient everywhere.

    Forward is exactly ``cos(m1 * arccos(clamp(t, -1, 1)) + m2)``. Backward with respect to ``t`` is
    ``m1 * sin(m1*theta + m2) / max(sin(theta), SIN_EPS)`` (the exact derivative away from t = +-1) or, with
    ``straight_through``, the identity (insightface's in-place no-grad update). ``m2`` may be a tensor with
    its own gradient ``-sin(m1*theta + m2)`` (MagFace's norm-dependent margin).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, m2: torch.Tensor, m1: float, straight_through: bool) -> torch.Tensor:
        theta = t.clamp(-1.0, 1.0).arccos()
        angle = theta * m1 + m2 if m1 != 1.0 else theta + m2
        ctx.save_for_backward(t, angle)
        ctx.m1, ctx.straight_through = m1, straight_through
        return angle.cos()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        t, angle = ctx.saved_tensors
        grad_t = grad_m2 = None
        if ctx.needs_input_grad[0]:
            if ctx.straight_through:
                grad_t = grad
            else:
                grad_t = grad * ctx.m1 * angle.sin() / safe_sin(t)
        if ctx.needs_input_grad[1]:
            grad_m2 = -grad * angle.sin()
        return grad_t, grad_m2, None, None


def angular_margin(
    t: torch.Tensor, m2: torch.Tensor | float, m1: float = 1.0, straight_through: bool = False
) -> torch.Tensor:
    """cos(m1 * arccos(t) + m2), finite in value and gradient for every t (see ``_AngularMargin``)."""
    if not torch.is_tensor(m2):
        m2 = torch.full_like(t, float(m2))
    else:
        m2 = m2.to(t.dtype).expand_as(t)
    return _AngularMargin.apply(t, m2, float(m1), bool(straight_through))


#: what a head does where theta + m passes pi (where cos(theta + m) stops decreasing with theta):
#: ``"wrap"`` nothing (current insightface), ``"threshold"`` cos(theta) - m*sin(m) past pi - m (older insightface and
#: the CurricularFace / MagFace references), ``"easy"`` the margin only where cos(theta) > 0 ("easy margin")
OVERFLOW_MODES = ("wrap", "threshold", "easy")


def check_overflow(head: str, overflow: str) -> str:
    if overflow not in OVERFLOW_MODES:
        raise ValueError(f"{head}: overflow must be one of {OVERFLOW_MODES}, got {overflow!r}")
    return overflow


def apply_overflow(target: torch.Tensor, t: torch.Tensor, m: torch.Tensor | float, overflow: str) -> torch.Tensor:
    """``target`` = cos(theta + m) of target cosines ``t``, with the ``overflow`` rule (see ``OVERFLOW_MODES``)."""
    if overflow == "easy":
        return torch.where(t > 0, target, t)
    if overflow == "threshold":
        if torch.is_tensor(m):
            return torch.where(t > torch.cos(math.pi - m), target, t - torch.sin(math.pi - m) * m)
        return torch.where(t > math.cos(math.pi - m), target, t - math.sin(math.pi - m) * m)
    return target


def scatter_targets(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Write ``values`` at (rows, cols) of ``logits`` (autograd-aware, in place on an owned tensor)."""
    if rows.numel():
        logits.index_put_((rows, cols), values.to(logits.dtype))
    return logits
