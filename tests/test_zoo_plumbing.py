"""Across families: `facezoo models`, convert-checkpoint, Hub and ONNX export (MobileFaceNet, learnable kernels)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from hub_helpers import calibrate, small_model
from huggingface_hub import ModelCard

import facezoo  # noqa: F401
from facezoo.cli import main
from facezoo.errors import ConfigError
from facezoo.hub.card import describe_model
from facezoo.models.families import FAMILIES, face_facts, face_model_names, is_face_model


def test_every_face_model_tells_its_facts():
    names = face_model_names()
    assert names[:2] == ["iresnet18", "iresnet18_k7"] and "mobilefacenet_large_gap" in names
    assert face_model_names(["mobilefacenet*"]) == [
        "mobilefacenet",
        "mobilefacenet_gwp",
        "mobilefacenet_gap",
        "mobilefacenet_large",
        "mobilefacenet_large_gwp",
        "mobilefacenet_large_gap",
    ]
    for name in ("iresnet18_gwp_k7", "mobilefacenet_gwp"):
        model = timm.create_model(name, device="meta")
        assert is_face_model(model) and face_facts(model)["family"] in FAMILIES
    assert face_facts(timm.create_model("iresnet18_gwp_k7", device="meta"))["stem_kernel"] == 7
    assert not is_face_model(timm.create_model("resnet18", device="meta"))
    with pytest.raises(ConfigError, match="not a facezoo face model"):
        describe_model(timm.create_model("resnet18", device="meta"))


def test_cli_models_lists_the_families_in_one_table(capsys):
    assert main(["models", "mobilefacenet", "mobilefacenet_gwp", "iresnet18_gwp", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mobilefacenet"]["params"] == 2_059_520 and rows["mobilefacenet"]["head"] == "gdc"
    assert rows["mobilefacenet"]["params"] - rows["mobilefacenet_gwp"]["params"] == 512 * 49 + 1024
    assert rows["mobilefacenet_gwp"]["linear_params"] == 512 * 512  # fc without bias
    assert rows["mobilefacenet"]["family"] == "mobilefacenet" and rows["iresnet18_gwp"]["family"] == "iresnet"
    assert 0.5 < rows["mobilefacenet"]["gflops"] < 1.5  # insightface: ~0.45 G MACs
    assert main(["models", "mobilefacenet_large*"]) == 0
    md = capsys.readouterr().out
    assert "| mobilefacenet_large | gdc | 3x3 | 6.31 |" in md and "| mobilefacenet_large_gwp | gwp | 3x3 | 6.29 |" in md


def test_convert_checkpoint_of_an_mbf_training_checkpoint(tmp_path, capsys):
    model = small_model("mobilefacenet")
    torch.save(
        {"epoch": 3, "state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "a.pt"
    )
    assert main(["models", "convert-checkpoint", str(tmp_path / "a.pt"), str(tmp_path / "mbf.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = timm.create_model(
        "mobilefacenet", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "mbf.safetensors"))
    ).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_export_hub_mobilefacenet_with_a_learnable_kernel(tmp_path, capsys):
    model = small_model("mobilefacenet_gwp", global_pool="gwp_softmax")
    with torch.no_grad():
        model.features.layers[0].logits.add_(torch.randn(7, 7) * 0.1)  # a kernel moved away from the Gaussian
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    args = ["export", "hub", "mobilefacenet_gwp", "--checkpoint", str(tmp_path / "backbone.pth")]
    assert main([*args, "--global-pool", "gwp_softmax", "--output", str(tmp_path / "pub")]) == 0
    cfg = json.loads((tmp_path / "pub" / "config.json").read_text())
    assert cfg["facezoo"]["family"] == "mobilefacenet" and cfg["facezoo"]["head"] == "gwp_softmax"
    assert cfg["model_args"]["global_pool"] == "gwp_softmax"
    loaded = timm.create_model(f"local-dir:{tmp_path / 'pub'}", pretrained=True).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    card = ModelCard.load(tmp_path / "pub" / "README.md")
    assert "A MobileFaceNet face-recognition backbone" in card.text and "learnable softmax" in card.text
    assert "| stem | 3x3 first conv |" in card.text and "gwp" in card.data.tags


onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx (pip install 'facezoo[test]')")
pytest.importorskip("onnxscript", reason="ONNX export tests need onnxscript (pip install 'facezoo[test]')")
pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install 'facezoo[test]')")


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("iresnet18_gwp", dict(global_pool="gwp_sigma", layers=[1, 1, 1, 1], widths=[8, 16, 32, 64])),
        ("iresnet18_gwp", dict(global_pool="gwp_softmax", layers=[1, 1, 1, 1], widths=[8, 16, 32, 64])),
    ],
)
def test_onnx_export_of_learnable_kernels(tmp_path, name, kwargs):
    from facezoo.export import export_onnx

    model = calibrate(small_model(name, **kwargs))
    pool = getattr(model, "pool", None)
    if pool is not None:  # a learned kernel, not the initial Gaussian
        with torch.no_grad():
            next(pool.parameters()).add_(0.3)
    info = export_onnx(model, tmp_path / "model.onnx")
    assert info["max_abs_diff"] < 1e-3 and info["max_abs_output"] > 0.1 and info["batch"] == 3


def test_cli_export_onnx_mobilefacenet(tmp_path, capsys):
    """A MobileFaceNet with a learned kernel through ``facezoo export onnx`` (which checks it under onnxruntime)."""
    model = calibrate(small_model("mobilefacenet_gwp", global_pool="gwp_sigma"))
    with torch.no_grad():
        model.features.layers[0].log_sigma_scale.fill_(0.2)
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    args = ["export", "onnx", "mobilefacenet_gwp", "--checkpoint", str(tmp_path / "backbone.pth")]
    assert main([*args, "--global-pool", "gwp_sigma", "--output", str(tmp_path / "mbf.onnx")]) == 0
    assert (tmp_path / "mbf.onnx").is_file() and "mbf.onnx" in capsys.readouterr().out


def test_readme_headline_table_is_what_facezoo_models_counts():
    """Every row of the README's per-family headline table: the parameter counts `facezoo models` gives."""
    import re
    from pathlib import Path

    from facezoo.models.profile import count_params

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### The headline per family") :]
    row = r"^\| [^|]+ \| (\w+) \| [^|]+ \| ([\d,]+) \| ([\d.]+)% \| (\w+) \| ([\d,]+) \| ([\d,]+) \|$"
    rows = re.findall(row, section, re.M)
    assert len(rows) >= 8, "README: the headline table per family is missing rows"

    def params(name: str) -> int:
        return count_params(timm.create_model(name, device="meta"))

    for base, head, share, gwp, gwp_params, removes in rows:
        n_base, n_gwp = params(base), params(gwp)
        assert n_gwp == int(gwp_params.replace(",", "")), gwp
        assert n_base - n_gwp == int(removes.replace(",", "")), base
        assert f"{100 * int(head.replace(',', '')) / n_base:.2f}" == share, base
