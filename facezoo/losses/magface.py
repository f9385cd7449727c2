"""MagFace head and its norm regulariser: the embedding norm becomes a quality measure.

Meng et al., "MagFace: A Universal Representation for Face Recognition and Quality Assessment", CVPR 2021;
formulas as in the authors' code (github.com/IrvingMeng/MagFace, ``models/magface.py``). With the norm
a = clamp(||f||, l_a, u_a), the target gets an ArcFace margin m(a) growing linearly from l_margin at l_a to
u_margin at u_a, and the loss adds lambda_g * mean(g(a)) with g(a) = a / u_a^2 + 1 / a, which pushes easy
(high-quality) samples to large norms.
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
    check_norms,
    check_overflow,
    check_scale_and_margin,
    compute_dtype,
    scatter_targets,
)


class MagFace(MarginHead):
    """MagFace margin head; ``forward(cosine, labels, norms)``, plus ``regularizer(norms)`` to add to the loss.

    Args:
        s: scale (64).
        l_a, u_a: norm range [10, 110] over which the margin varies (norms are clamped to it).
        l_margin, u_margin: margin at l_a and at u_a (0.45, 0.8).
        lambda_g: weight of the norm regulariser (35).
        straight_through: True (the default of every facezoo head) back-propagates the target cosine as an identity
            (insightface's ArcFace gradient); False gives the exact derivative of cos(theta + m(a)) (the
            reference's), finite at cosine = +-1.
        overflow: past pi - m(a), ``"threshold"`` (default, the reference: cos(theta) - m(a)*sin(m(a))), ``"easy"``
            (the margin only where cos(theta) > 0) or ``"wrap"``.

    Gradients flow into the norms through the margin and the regulariser, as in the reference.
    ``facezoo.losses.PartialFC`` adds the regulariser itself.
    """

    needs_norms = True

    def __init__(
        self,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_margin: float = 0.45,
        u_margin: float = 0.8,
        lambda_g: float = 35.0,
        *,
        straight_through: bool = True,
        overflow: str = "threshold",
    ) -> None:
        super().__init__()
        check_scale_and_margin(
            "MagFace", s=s, l_a=l_a, u_a=u_a, l_margin=l_margin, u_margin=u_margin, lambda_g=lambda_g
        )
        if s <= 0:
            raise ValueError(f"MagFace: scale s must be > 0, got {s}")
        if not 0 < l_a < u_a:
            raise ValueError(f"MagFace: need 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        if not 0 <= l_margin <= u_margin < math.pi:
            raise ValueError(f"MagFace: need 0 <= l_margin <= u_margin < pi, got {l_margin}, {u_margin}")
        self.s, self.l_a, self.u_a = float(s), float(l_a), float(u_a)
        self.l_margin, self.u_margin, self.lambda_g = float(l_margin), float(u_margin), float(lambda_g)
        self.straight_through = bool(straight_through)
        self.overflow = check_overflow("MagFace", overflow)

    def extra_repr(self) -> str:
        return (
            f"s={self.s}, l_a={self.l_a}, u_a={self.u_a}, l_margin={self.l_margin}, u_margin={self.u_margin}, "
            f"lambda_g={self.lambda_g}, "
            f"straight_through={self.straight_through}, overflow={self.overflow!r}"
        )

    def margin(self, a: torch.Tensor) -> torch.Tensor:
        """Margin m(a) for clamped norms a: linear from l_margin at l_a to u_margin at u_a."""
        return (self.u_margin - self.l_margin) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_margin

    def regularizer(self, norms: torch.Tensor) -> torch.Tensor:
        """lambda_g * mean(a / u_a^2 + 1 / a) over the batch, a = clamp(norm, l_a, u_a)."""
        norms = check_norms("MagFace", norms, norms.reshape(-1).shape[0])
        a = norms.to(compute_dtype(norms)).clamp(self.l_a, self.u_a)
        return self.lambda_g * (a / self.u_a**2 + 1 / a).mean()

    def forward(
        self,
        cosine: torch.Tensor,
        labels: torch.Tensor,
        norms: Optional[torch.Tensor] = None,
        *,
        target_cosine: Optional[torch.Tensor] = None,
        global_batch: bool = False,
    ) -> torch.Tensor:
        """Scaled logits [N, C]; ``norms`` [N] or [N, 1] are required."""
        labels = check_inputs("MagFace", cosine, labels)
        norms = check_norms("MagFace", norms, cosine.shape[0])
        dtype = compute_dtype(cosine)
        x = cosine.to(dtype).clamp(-1, 1)
        logits = x * self.s
        rows = torch.where(labels != -1)[0]
        cols = labels[rows]
        ma = self.margin(norms.to(dtype).clamp(self.l_a, self.u_a)[rows])
        t = x[rows, cols]
        target = apply_overflow(angular_margin(t, ma, 1.0, self.straight_through), t, ma, self.overflow)
        return scatter_targets(logits, rows, cols, target * self.s)
