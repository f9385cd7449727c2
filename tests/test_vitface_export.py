"""Face ViTs through facezoo's tools: `facezoo models`, convert-checkpoint, `facezoo export hub` and ONNX export."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from hub_helpers import calibrate, small_model
from huggingface_hub import ModelCard

import facezoo  # noqa: F401
from facezoo.cli import main


def test_cli_models_lists_the_vits(capsys):
    assert main(["models", "vitface_t", "vitface_t_gwp", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["vitface_t"]["params"] == 19_137_792 and rows["vitface_t"]["family"] == "vitface"
    assert rows["vitface_t"]["params"] - rows["vitface_t_gwp"]["params"] == 144 * 256 * 256  # feature.0
    assert rows["vitface_t_gwp"]["head"] == "gwp" and rows["vitface_t_gwp"]["stem_kernel"] == 9  # the patch size
    assert 2.5 < rows["vitface_t"]["gflops"] < 3.5


def test_convert_checkpoint_of_a_vit_training_checkpoint(tmp_path, capsys):
    model = small_model("vitface_t_gwp", depth=1)
    checkpoint = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "a.pt")
    assert main(["models", "convert-checkpoint", str(tmp_path / "a.pt"), str(tmp_path / "vit.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = timm.create_model(
        "vitface_t_gwp", depth=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "vit.safetensors"))
    ).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_export_hub_vit_gwp(tmp_path, capsys):
    model = small_model("vitface_t_gwp")
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    args = ["export", "hub", "vitface_t_gwp", "--checkpoint", str(tmp_path / "backbone.pth")]
    assert main([*args, "--output", str(tmp_path / "pub")]) == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "pub" / "config.json").read_text())
    assert cfg["architecture"] == "vitface_t_gwp" and cfg["facezoo"]["family"] == "vitface"
    assert cfg["facezoo"]["head"] == "gwp" and cfg["pretrained_cfg"]["input_size"] == [3, 112, 112]
    loaded = timm.create_model(f"local-dir:{tmp_path / 'pub'}", pretrained=True).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    card = ModelCard.load(tmp_path / "pub" / "README.md")
    assert "face ViT" in card.text and "gwp" in card.data.tags


pytest.importorskip("onnx", reason="ONNX export tests need onnx (pip install 'facezoo[test]')")
pytest.importorskip("onnxscript", reason="ONNX export tests need onnxscript (pip install 'facezoo[test]')")
pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install 'facezoo[test]')")


@pytest.mark.parametrize("name", ["vitface_t", "vitface_t_gwp"])
def test_onnx_export_of_vits(tmp_path, name):
    from facezoo.export import export_onnx

    model = calibrate(small_model(name, depth=1))
    info = export_onnx(model, tmp_path / "model.onnx")  # dynamic batch, checked with onnxruntime at 112x112
    assert info["max_abs_diff"] < 1e-3 and info["max_abs_output"] > 0.1 and info["batch"] == 3
