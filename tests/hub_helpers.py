"""Shared fixtures-in-code for the publishing tests: small models, a real ``facezoo eval`` results.json, HF caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import timm
import torch
import torch.nn as nn

import facezoo  # noqa: F401
from facezoo.eval import verification
from facezoo.eval.report import build_results

REPO_ROOT = Path(__file__).resolve().parents[1]
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def small_model(name: str = "iresnet18_gwp", seed: int = 0, **kwargs: Any) -> nn.Module:
    """A depth-18 facezoo model in eval mode with non-default BatchNorm / PReLU values (so buffers must round-trip)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if isinstance(getattr(m, "bias", None), nn.Parameter):
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return model.eval()


@torch.no_grad()
def calibrate(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics from one random batch, so embeddings are O(1) as in a trained model (an untrained
    IResNet's outputs reach 1e6, which hides small numeric differences)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    model.train()
    size = model.pretrained_cfg["input_size"]
    model(torch.randn(4, *size, generator=torch.Generator().manual_seed(seed)))
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def eval_results(model_name: str = "iresnet18_gwp", target: str = "IJBC") -> Dict[str, Any]:
    """A results.json document as ``facezoo eval`` builds it: real verification outputs, an IJB block."""
    rng = np.random.default_rng(0)
    ver = {}
    for i, name in enumerate(("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")):
        emb = rng.standard_normal((400, 16)).astype(np.float32)
        emb[1::2] = emb[0::2] + (0.6 + 0.1 * i) * rng.standard_normal((200, 16))  # pairs: same-ish identity
        issame = np.ones(200, dtype=bool)
        issame[100:] = False
        emb[201::2] = rng.standard_normal((100, 16))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        ver[name] = verification.evaluate(emb, issame)
    ijb = {
        "target": target,
        "num_images": 100,
        "num_pairs": 1000,
        "flip": True,
        "modes": {
            "default": {"tar_at_far": {f: 0.5 + 0.08 * i for i, f in enumerate(FARS)}},
            "no_faceness": {"tar_at_far": {f: 0.45 + 0.08 * i for i, f in enumerate(FARS)}},
        },
    }
    return build_results(model_name, ver, ijb, extra={"checkpoint": "backbone.pth", "flip": True, "nfolds": 10})


def write_results(path: Path, doc: Optional[Dict[str, Any]] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc or eval_results(), indent=1))
    return path


def hf_cache_with(cache: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face hub cache holding ``folder`` as the ``main`` snapshot of ``repo_id``."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return cache


def reference_embeddings(model: nn.Module, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(batch, 3, 112, 112)
    with torch.no_grad():
        return model(x)
