"""Build a margin head from a name and keyword arguments (what training recipes store in YAML)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from facezoo.losses.adaface import AdaFace
from facezoo.losses.curricularface import CurricularFace
from facezoo.losses.magface import MagFace
from facezoo.losses.margin import ArcFace, CombinedMarginLoss, CosFace

MARGIN_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "arcface": ArcFace,
    "cosface": CosFace,
    "combined": CombinedMarginLoss,
    "combinedmarginloss": CombinedMarginLoss,
    "adaface": AdaFace,
    "curricularface": CurricularFace,
    "magface": MagFace,
}


def create_margin_loss(name: str, **kwargs: Any) -> nn.Module:
    """Margin head by name (case-insensitive; '-' and '_' ignored), e.g. ``create_margin_loss("arcface", m=0.4)``.

    Names: arcface, cosface, combined (CombinedMarginLoss: s, m1, m2, m3), adaface, curricularface, magface.
    Keyword arguments are the head's constructor arguments; a wrong one raises a TypeError naming the head.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MARGIN_LOSSES:
        choices = sorted(set(MARGIN_LOSSES) - {"combinedmarginloss"})
        raise ValueError(f"unknown margin loss {name!r}; choose one of {choices}")
    cls = MARGIN_LOSSES[key]
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"create_margin_loss({name!r}): {err}") from err
