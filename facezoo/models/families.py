"""The face-model families facezoo registers, and the face facts every face model tells about itself.

Each family is one model file (``facezoo/models/<module>.py``) whose entrypoints timm records under that module
name. Every face model class carries the same attributes, so that ``facezoo models``, model cards, Hub export and
ONNX export ask the model instead of assuming one architecture:

* ``family`` -- 'iresnet', 'mobilefacenet', 'vitface', 'edgeface';
* ``pool_type`` -- the head the embedding layer is built for ('flatten', 'gdc', 'avg', 'gwp', 'gwp_sigma', ...);
* ``global_pool`` -- the pooling in use ('' = none: forward returns the map);
* ``embed_dim`` -- the output embedding size;
* ``layout`` -- whose checkpoints the module names follow ('insightface' by default, 'adaface', 'edgeface');
* ``stem_kernel`` -- the first conv's kernel side (a ViT's patch size), 0 when there is no such choice
  (EdgeNeXt's fixed 4x4 patchify stem).
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch.nn as nn

__all__ = ["FAMILIES", "FACE_FACTS", "face_model_names", "is_face_model", "face_facts", "checkpoint_filter_for"]

#: family -> model file (the timm module name of its entrypoints), in the order ``facezoo models`` lists them
FAMILIES: Dict[str, str] = {
    "iresnet": "iresnet",
    "mobilefacenet": "mobilefacenet",
    "vitface": "vitface",
    "edgeface": "edgeface",
}
#: the attributes every face model class has (see the module docstring)
FACE_FACTS = ("family", "pool_type", "global_pool", "embed_dim", "layout", "stem_kernel")


def _family_module(family: str) -> Optional[Any]:
    try:
        return importlib.import_module(f"facezoo.models.{FAMILIES[family]}")
    except ModuleNotFoundError:  # a family whose file this install does not have
        return None


def face_model_names(patterns: Optional[Iterable[str]] = None) -> List[str]:
    """facezoo's registered models, family by family in each file's own order, optionally filtered by fnmatch
    patterns (e.g. ``'mobilefacenet*'``)."""
    import timm

    import facezoo  # noqa: F401  (registers the models)

    names: List[str] = []
    for family, module_name in FAMILIES.items():
        registered = set(timm.list_models(module=module_name))
        module = _family_module(family)
        order = {n: i for i, n in enumerate(getattr(module, "model_names", list)())}
        names += sorted(registered, key=lambda n: (order.get(n, len(order)), n))
    if patterns:
        pats = list(patterns)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    return names


def is_face_model(model: nn.Module) -> bool:
    """Whether ``model`` is a facezoo face model (it has every attribute of :data:`FACE_FACTS`)."""
    return all(hasattr(model, a) for a in FACE_FACTS) and model.family in FAMILIES


def face_facts(model: nn.Module) -> Dict[str, Any]:
    """The face facts of ``model``: :data:`FACE_FACTS` as a dict (``stem_kernel`` and ``embed_dim`` as ints)."""
    facts = {a: getattr(model, a) for a in FACE_FACTS}
    facts["stem_kernel"] = int(facts["stem_kernel"])
    facts["embed_dim"] = int(facts["embed_dim"])
    return facts


def checkpoint_filter_for(model: nn.Module) -> Callable[[Dict[str, Any], nn.Module], Dict[str, Any]]:
    """The ``checkpoint_filter_fn`` of ``model``'s family file (maps and checks a state_dict for that model)."""
    module = _family_module(model.family)
    if module is None or not hasattr(module, "checkpoint_filter_fn"):
        raise ValueError(f"family {model.family!r} has no checkpoint_filter_fn in facezoo.models")
    return module.checkpoint_filter_fn
