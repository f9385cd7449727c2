"""Size and compute of a model: the numbers of the GWP paper's parameter columns, plus FLOPs.

Parameters are counted as insightface counts them: the fixed BatchNorm1d gamma (``features.weight``), a frozen
Parameter there and a buffer here, is included. Everything is measured on the ``meta`` device, so profiling even
iresnet200 allocates no weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from facezoo.layers import count_linear_params
from facezoo.models.families import face_facts, face_model_names, is_face_model


@dataclass
class ModelStats:
    """One row of ``facezoo models``."""

    name: str
    family: str
    head: str
    stem_kernel: int
    params: int
    linear_params: int
    linear_share: float  # linear_params / params
    gflops: float  # 2 x multiply-accumulates, one 3x112x112 image
    input_size: tuple
    fixed_input_size: bool

    def as_dict(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    """All Parameters plus fixed-value weights stored as buffers named ``*.weight`` (insightface's frozen gamma)."""
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for k, b in model.named_buffers() if k.endswith(".weight"))
    return n


def count_flops(model: nn.Module, input_size: tuple) -> int:
    """FLOPs (2 per multiply-accumulate) of one forward pass on a single image of ``input_size``."""
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_size), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def model_stats(name: str) -> ModelStats:
    model = timm.create_model(name, device="meta").eval()
    cfg = model.pretrained_cfg
    input_size = tuple(cfg["input_size"])
    params = count_params(model)
    linear = count_linear_params(model)
    # a face model tells its facts; any other timm model is profiled as far as it goes
    facts = face_facts(model) if is_face_model(model) else {"family": "", "pool_type": "", "stem_kernel": 0}
    return ModelStats(
        name=name,
        family=facts["family"],
        head=facts["pool_type"],
        stem_kernel=facts["stem_kernel"],
        params=params,
        linear_params=linear,
        linear_share=linear / params,
        gflops=count_flops(model, input_size) / 1e9,
        input_size=input_size,
        fixed_input_size=bool(cfg.get("fixed_input_size", False)),
    )


def list_face_models(patterns: Optional[Iterable[str]] = None) -> List[str]:
    """facezoo's registered models of every family, optionally filtered by fnmatch patterns."""
    return face_model_names(patterns)


def stats_table_markdown(rows: List[ModelStats]) -> str:
    lines = [
        "| model | head | stem | params (M) | linear params (M) | linear share | GFLOPs @112 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        stem = f"{r.stem_kernel}x{r.stem_kernel}" if r.stem_kernel else "-"  # 0: no stem conv (patch embedding)
        lines.append(
            f"| {r.name} | {r.head} | {stem} | {r.params / 1e6:.2f} | "
            f"{r.linear_params / 1e6:.2f} | {100 * r.linear_share:.2f}% | {r.gflops:.2f} |"
        )
    return "\n".join(lines)
