"""Additive / multiplicative cosine-margin heads: CombinedMarginLoss, ArcFace, CosFace (insightface parity).

The target logit of each row becomes ``s * (cos(m1 * theta + m2) - m3)`` and every other logit ``s * cos``:
m1 is SphereFace's multiplicative angular margin (Liu et al., "SphereFace", CVPR 2017), m2 ArcFace's additive
angular margin (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019) and
m3 CosFace's additive cosine margin (Wang et al., "CosFace: Large Margin Cosine Loss", CVPR 2018); the
combination is the "combined margin" of the ArcFace paper.

Parity with insightface ``arcface_torch/losses.py``: the forward values are insightface's (the target is
``cos(arccos(t) + m2)`` computed in float32, then times s) and, by default, so is the gradient: insightface
applies the angular margin in place under ``torch.no_grad()``, so d logits / d cosine is ``s`` everywhere
(straight-through). ``straight_through=False`` gives the exact gradient of cos(m1*theta + m2) instead.
Unlike insightface, every (m1, m2, m3) combination is computed as written (insightface ignores m1 and m2
when m3 > 0 and fails with a bare ``raise`` when m1 != 1).
"""

from __future__ import annotations

import math
from typing import Optional

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


class CombinedMarginLoss(MarginHead):
    """Combined margin head ``s * (cos(m1*theta + m2) - m3)`` on the target, ``s * cos`` elsewhere.

    Args:
        s: scale applied to every logit (insightface: 64).
        m1: multiplicative angular margin (SphereFace); 1 disables it.
        m2: additive angular margin in radians (ArcFace), in [0, pi).
        m3: additive cosine margin (CosFace), >= 0.
        straight_through: True (default, insightface) back-propagates the target as if no margin were applied
            (d logit / d cosine = s); False uses the exact derivative of cos(m1*theta + m2), kept finite at
            cosine = +-1 by bounding sin(theta) below by 0.01 (acts only for cosine > 0.99995).
        overflow: what happens when m1*theta + m2 passes pi, where cos(m1*theta + m2) stops decreasing.
            ``"wrap"`` (default, current insightface): nothing special, the cosine wraps. ``"threshold"``
            (older insightface / most ArcFace code): for theta > pi - m2 use ``cos(theta) - m2 * sin(m2)``
            (needs m1 == 1). ``"easy"`` ("easy margin"): apply the angular margin only where cos(theta) > 0.
        interclass_filtering_threshold: insightface option; when > 0, non-target cosines above it are zeroed
            (in every row), to ignore likely label noise.
    """

    def __init__(
        self,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        *,
        straight_through: bool = True,
        overflow: str = "wrap",
        interclass_filtering_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_scale_and_margin(name, s=s, m1=m1, m2=m2, m3=m3)
        if s <= 0:
            raise ValueError(f"{name}: scale s must be > 0, got {s}")
        if m1 <= 0:
            raise ValueError(f"{name}: m1 (multiplicative margin) must be > 0, got {m1}")
        if not 0 <= m2 < math.pi:
            raise ValueError(f"{name}: m2 (additive angular margin, radians) must be in [0, pi), got {m2}")
        if m3 < 0:
            raise ValueError(f"{name}: m3 (additive cosine margin) must be >= 0, got {m3}")
        check_overflow(name, overflow)
        if overflow == "threshold" and m1 != 1.0:
            raise ValueError(
                f"{name}: overflow='threshold' (cos(theta) - m2*sin(m2) past pi - m2) is defined for m1 == 1 only, "
                f"got m1={m1}; use overflow='wrap' or 'easy'"
            )
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.straight_through = bool(straight_through)
        self.overflow = overflow
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)

    def extra_repr(self) -> str:
        return (
            f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, straight_through={self.straight_through}, "
            f"overflow={self.overflow!r}"
        )

    def target_logit(self, t: torch.Tensor) -> torch.Tensor:
        """Unscaled margin-applied target cosine for target cosines ``t``."""
        if self.m1 == 1.0 and self.m2 == 0.0:
            out = t
        else:
            out = apply_overflow(angular_margin(t, self.m2, self.m1, self.straight_through), t, self.m2, self.overflow)
        return out - self.m3 if self.m3 else out

    def forward(
        self,
        cosine: torch.Tensor,
        labels: torch.Tensor,
        norms: Optional[torch.Tensor] = None,
        *,
        target_cosine: Optional[torch.Tensor] = None,
        global_batch: bool = False,
    ) -> torch.Tensor:
        """Scaled logits [N, C] (``norms``, ``target_cosine`` and ``global_batch`` are not used)."""
        labels = check_inputs(type(self).__name__, cosine, labels)
        x = cosine.to(compute_dtype(cosine))
        rows = torch.where(labels != -1)[0]
        cols = labels[rows]
        if self.interclass_filtering_threshold > 0:
            with torch.no_grad():
                dirty = x > self.interclass_filtering_threshold
                dirty[rows, cols] = False
                keep = (~dirty).to(x.dtype)
            x = x * keep
        logits = x * self.s
        return scatter_targets(logits, rows, cols, self.target_logit(x[rows, cols]) * self.s)


class ArcFace(CombinedMarginLoss):
    """ArcFace head: target ``s * cos(theta + m)`` (Deng et al., CVPR 2019); insightface (1, m, 0).

    Args:
        s: scale (64). m: additive angular margin in radians (0.5; the GWP paper's WebFace4M runs use 0.4).
        straight_through, overflow: see ``CombinedMarginLoss``.
    """

    def __init__(
        self, s: float = 64.0, m: float = 0.5, *, straight_through: bool = True, overflow: str = "wrap"
    ) -> None:
        super().__init__(s, 1.0, m, 0.0, straight_through=straight_through, overflow=overflow)
        self.m = float(m)


class CosFace(CombinedMarginLoss):
    """CosFace head: target ``s * (cos(theta) - m)`` (Wang et al., CVPR 2018); insightface (1, 0, m).

    Args:
        s: scale (64). m: additive cosine margin (0.4).
    """

    def __init__(self, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(s, 1.0, 0.0, m)
        self.m = float(m)
