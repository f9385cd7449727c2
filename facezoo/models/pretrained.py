"""What a pretrained tag (``architecture.tag``, timm's naming) is: its source, data, loss, license and the accuracy
its source reports.

The weights themselves are found by timm from the pretrained cfg of each model file (``hf_hub_id`` /
``hf_hub_filename``); this module keeps the facts about them that a pretrained cfg has no field for, so that
``facezoo models --pretrained``, the README table and model cards of fine-tuned models can show them. Each model
file registers its tags with :func:`register_pretrained` next to its ``default_cfgs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

__all__ = ["PretrainedInfo", "register_pretrained", "pretrained_info", "list_pretrained_info"]


@dataclass(frozen=True)
class PretrainedInfo:
    """Facts about one pretrained tag, as its source states them (never facezoo's own measurement)."""

    #: ``architecture.tag``, e.g. ``iresnet100.adaface_webface12m``
    name: str
    #: Hugging Face Hub repository the weights come from, e.g. ``minchul/cvlface_adaface_ir101_webface12m``
    hub_id: str
    #: file in that repository holding the weights
    filename: str
    #: training data as the source names it, e.g. ``WebFace12M``
    dataset: str
    #: training loss, e.g. ``AdaFace``
    loss: str
    #: the weights' license as the source states it (SPDX id where there is one, else ``other``)
    license: str
    #: one line on the license terms, e.g. "weights follow WebFace's terms: non-commercial research only"
    license_note: str
    #: who published the weights, e.g. ``CVLface (mk-minchul/CVLface)``
    source: str
    #: web page of the source (the Hub repository or the code)
    url: str
    #: accuracies the source reports, in %, keyed by benchmark name (``LFW``, ``IJB-C@FAR=1e-4`` ...)
    reported: Dict[str, float] = field(default_factory=dict)
    #: where the reported numbers come from (a URL or a file of the source)
    reported_by: str = ""
    #: anything a user must know that could not be confirmed from the source
    notes: List[str] = field(default_factory=list)


_REGISTRY: Dict[str, PretrainedInfo] = {}


def register_pretrained(*infos: PretrainedInfo) -> None:
    """Record ``infos`` (called by the model files at import, beside their ``default_cfgs``)."""
    for info in infos:
        if "." not in info.name:
            raise ValueError(f"pretrained tag {info.name!r} is not 'architecture.tag'")
        _REGISTRY[info.name] = info


def pretrained_info(name: str) -> Optional[PretrainedInfo]:
    """The facts of tag ``name`` (``architecture.tag``), or None when facezoo has none for it."""
    return _REGISTRY.get(name)


def list_pretrained_info() -> List[PretrainedInfo]:
    """Every registered tag's facts, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
