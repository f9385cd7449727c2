"""facezoo models through timm's Hub paths, offline: ``local-dir:`` and ``hf-hub:`` from a populated HF cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import timm
import torch
from timm.models import save_for_hf

import facezoo  # noqa: F401


def _published_folder(path: Path) -> torch.nn.Module:
    """A folder as timm publishes it: model.safetensors + config.json (architecture, pretrained_cfg, ...)."""
    torch.manual_seed(0)
    model = timm.create_model("iresnet18_gwp_k7").eval()
    save_for_hf(model, str(path), safe_serialization=True)
    return model


def test_local_dir_loads_facezoo_model(tmp_path):
    model = _published_folder(tmp_path / "pub")
    config = json.loads((tmp_path / "pub" / "config.json").read_text())
    assert config["architecture"] == "iresnet18_gwp_k7" and (tmp_path / "pub" / "model.safetensors").exists()
    loaded = timm.create_model(f"local-dir:{tmp_path / 'pub'}", pretrained=True).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert tuple(loaded.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)


def test_hf_hub_id_from_offline_cache(tmp_path, hf_offline_cache):
    """``hf-hub:org/name`` resolves from a Hugging Face cache populated here, with HF_HUB_OFFLINE=1 (no network)."""
    model = _published_folder(tmp_path / "pub")
    hf_env = hf_offline_cache("facezoo-test/iresnet18_gwp_k7", tmp_path / "pub")
    script = (
        "import torch, timm, facezoo\n"
        "m = timm.create_model('hf-hub:facezoo-test/iresnet18_gwp_k7', pretrained=True).eval()\n"
        "torch.manual_seed(1); x = torch.randn(2, 3, 112, 112)\n"
        "torch.save(m(x).detach(), 'out.pt')\n"
    )
    env = dict(os.environ, **hf_env)
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, capture_output=True)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), model(x))
