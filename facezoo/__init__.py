"""facezoo: face-recognition backbones, losses, data and evaluation as a timm plugin.

``import facezoo`` registers the face backbones with timm, so ``timm.create_model('iresnet50_gwp_k7')`` works.
The sub-packages ``facezoo.losses``, ``facezoo.data``, ``facezoo.eval``, ``facezoo.hub`` (publishing) and
``facezoo.export`` (ONNX) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from facezoo import layers, models  # noqa: F401  (importing models registers them with timm)

__version__ = "0.1.0"

_LAZY_SUBPACKAGES = ("losses", "data", "eval", "train", "hub", "export")


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"facezoo.{name}")
    raise AttributeError(f"module 'facezoo' has no attribute {name!r}")
