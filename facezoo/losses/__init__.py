"""Margin-softmax heads and Partial FC for face recognition training.

Heads map (cosine logits [N, C], labels [N]; -1 = class on another shard) to scaled logits:
``CombinedMarginLoss`` / ``ArcFace`` / ``CosFace`` (insightface parity), ``AdaFace``, ``CurricularFace``,
``MagFace``. ``PartialFC`` shards the class centers over ranks and returns the loss; ``gather_shards``,
``reshard`` and ``reshard_files`` move its checkpoints between world sizes.
"""

from facezoo.losses.adaface import AdaFace
from facezoo.losses.base import MarginHead
from facezoo.losses.curricularface import CurricularFace
from facezoo.losses.factory import create_margin_loss
from facezoo.losses.magface import MagFace
from facezoo.losses.margin import ArcFace, CombinedMarginLoss, CosFace
from facezoo.losses.partial_fc import (
    PartialFC,
    gather_shards,
    load_shard_file,
    read_shard_range,
    reshard,
    reshard_files,
    shard_range,
)

__all__ = [
    "AdaFace",
    "ArcFace",
    "CombinedMarginLoss",
    "CosFace",
    "CurricularFace",
    "MagFace",
    "MarginHead",
    "PartialFC",
    "create_margin_loss",
    "gather_shards",
    "load_shard_file",
    "read_shard_range",
    "reshard",
    "reshard_files",
    "shard_range",
]
