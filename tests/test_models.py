"""IResNet models: paper parameter counts, insightface / GWP-author checkpoints, clear errors for bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import List

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

import facezoo  # noqa: F401
from facezoo.models.profile import count_params, model_stats

# --- a reference insightface IResNet, written here from arcface_torch/backbones/iresnet.py ----------------------------


class RefBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return out


class RefIResNet(nn.Module):
    """insightface's IResNet; ``pool='gwp'`` / ``stem=7`` give the GWP authors' variant (their Gaussian is computed
    from the paper's equations here, not stored)."""

    def __init__(self, layers: List[int], pool: str = "flatten", stem: int = 3, num_features: int = 512):
        super().__init__()
        self.inplanes = 64
        self.pool_kind = pool
        self.conv1 = nn.Conv2d(3, 64, kernel_size=stem, stride=1, padding=stem // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=0, inplace=True)
        self.fc = nn.Linear(512 * (49 if pool == "flatten" else 1), num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        c = 3
        g = [[math.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * 3.0**2)) for x in range(7)] for y in range(7)]
        s = sum(map(sum, g))
        self.gauss = torch.tensor([[v / s for v in row] for row in g], dtype=torch.float64)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)

    def _make_layer(self, planes, blocks):
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-05)
        )
        layers = [RefBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [RefBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        if self.pool_kind == "flatten":
            x = torch.flatten(x, 1)
        elif self.pool_kind == "gwp":
            x = torch.mean(x * self.gauss.to(x.dtype), dim=(2, 3))
        else:
            x = torch.mean(x, dim=(2, 3))
        x = self.dropout(x)
        return self.features(self.fc(x))


def _randomize_bn(model: nn.Module) -> None:
    """Give BatchNorm running stats / affine values non-trivial values, so a wrong mapping would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if m.weight.requires_grad:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)


def _reference(name: str) -> RefIResNet:
    torch.manual_seed(0)
    pool = "gwp" if "_gwp" in name else "avg" if "_gap" in name else "flatten"
    ref = RefIResNet([2, 2, 2, 2], pool=pool, stem=7 if name.endswith("_k7") else 3)
    with torch.no_grad():
        _randomize_bn(ref)
    return ref.eval()


# --- parameter counts ------------------------------------------------------------------------------------------------

PAPER_PARAMS_M = {  # the GWP paper's parameter columns: baseline -> GAP/GWP
    "iresnet18": 24.03,
    "iresnet18_gwp_k7": 11.45,
    "iresnet18_gap_k7": 11.45,
    "iresnet34": 34.14,
    "iresnet34_gwp": 21.56,
    "iresnet34_gap": 21.56,
    "iresnet34_gwp_k7": 21.56,
    "iresnet50": 43.59,
    "iresnet50_gwp_k7": 31.02,
    "iresnet50_gap_k7": 31.02,
    "iresnet100": 65.16,
    "iresnet100_gwp": 52.57,
    "iresnet100_gap": 52.57,
}


@pytest.mark.parametrize("name, expected_m", sorted(PAPER_PARAMS_M.items()))
def test_paper_parameter_counts(name, expected_m):
    stats = model_stats(name)
    assert round(stats.params / 1e6, 2) == expected_m


def test_linear_layer_counts_and_share():
    base, gwp = model_stats("iresnet50"), model_stats("iresnet50_gwp")
    assert base.linear_params == 512 * 7 * 7 * 512 + 512 == 12_845_568
    assert gwp.linear_params == 512 * 512 + 512 == 262_656
    assert base.params - gwp.params == 12_845_568 - 262_656
    assert round(100 * base.linear_share) == 29  # paper: 12.8 M (~30%)
    assert round(100 * gwp.linear_share, 1) == 0.8  # paper: 0.26 M (~0.84%)
    # GFLOPs: insightface quotes ~6.3 G multiply-accumulates for r50 at 112x112
    assert 12.0 < base.gflops < 13.0


def test_count_params_includes_frozen_gamma_like_insightface():
    model = timm.create_model("iresnet18", device="meta")
    trainable = sum(p.numel() for p in model.parameters())
    assert count_params(model) == trainable + 512
    assert count_params(model) == sum(p.numel() for p in RefIResNet([2, 2, 2, 2]).parameters())


# --- checkpoints ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iresnet18", "iresnet18_k7", "iresnet18_gwp_k7", "iresnet18_gap_k7"])
def test_insightface_and_gwp_author_checkpoints_load_strictly(tmp_path, name):
    ref = _reference(name)
    path = tmp_path / "backbone.pth"
    torch.save(ref.state_dict(), path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64)  # random weights give huge activations: compare in fp64
    with torch.no_grad():
        torch.testing.assert_close(model.double()(x), ref.double()(x), rtol=1e-5, atol=1e-3)
    assert set(model.state_dict()) == set(ref.state_dict())  # same keys, nothing renamed
    assert not model.features.weight.requires_grad and "features.weight" not in dict(model.named_parameters())


def test_safetensors_and_ddp_prefix(tmp_path):
    ref = _reference("iresnet18_gwp_k7")
    ddp = {f"module.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    save_file(ddp, str(tmp_path / "model.safetensors"))
    torch.save({"state_dict": ddp}, tmp_path / "wrapped.pth")
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    for f in ("model.safetensors", "wrapped.pth"):
        model = timm.create_model(
            "iresnet18_gwp_k7", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / f))
        ).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.double()(x), ref.double()(x), rtol=1e-5, atol=1e-3)


def test_pickled_code_in_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights only|weights_only|unsupported"):
        timm.create_model("iresnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_wrong_architecture_checkpoint_names_keys_and_guess(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save(_reference("iresnet18_gwp_k7").state_dict(), path)
    with pytest.raises(ValueError) as e:
        timm.create_model("iresnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    msg = str(e.value)
    assert "fc.weight" in msg and "iresnet18_gwp_k7" in msg
    with pytest.raises(ValueError, match="missing keys.*layer1.2"):
        timm.create_model("iresnet34", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    adaface = {"input_layer.0.weight": torch.zeros(64, 3, 3, 3), "body.0.res_layer.0.weight": torch.zeros(64)}
    torch.save(adaface, path)
    with pytest.raises(ValueError, match="AdaFace"):
        timm.create_model("iresnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_pretrained_backbone_with_new_classifier(tmp_path):
    ref = _reference("iresnet18")
    path = tmp_path / "backbone.pth"
    torch.save(ref.state_dict(), path)
    model = timm.create_model(
        "iresnet18", pretrained=True, num_classes=7, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    model, ref = model.double(), ref.double()
    assert model(x).shape == (2, 7)
    torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), ref(x))


# --- bad input --------------------------------------------------------------------------------------------------------


def test_fixed_size_model_rejects_other_input_size():
    model = timm.create_model("iresnet18").eval()
    with pytest.raises(ValueError, match="7x7 feature map.*_gwp"):
        model(torch.randn(1, 3, 128, 128))


def test_gwp_model_accepts_other_input_sizes():
    model = timm.create_model("iresnet18_gwp").eval()
    assert model(torch.randn(1, 3, 128, 128)).shape == (1, 512)
    assert model(torch.randn(1, 3, 96, 112)).shape == (1, 512)


def test_unknown_model_and_kwarg():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("iresnet51_gwp")
    with pytest.raises(TypeError):
        timm.create_model("iresnet18", device="meta", not_an_arg=1)
    with pytest.raises(ValueError, match="head must be one of"):
        timm.create_model("iresnet18", head="max", device="meta")


def test_num_classes_gives_classifier_and_embedding_dim():
    model = timm.create_model("iresnet18_gap", num_classes=10, embed_dim=128).eval()
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 10)
    assert model.fc.out_features == 128 and model.classifier.in_features == 128


# --- command line -----------------------------------------------------------------------------------------------------


def test_cli_models_json_and_markdown():
    out = subprocess.run(
        [sys.executable, "-m", "facezoo", "models", "iresnet34*", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    assert len(rows) == 8
    assert round(rows["iresnet34"]["params"] / 1e6, 2) == 34.14
    assert round(rows["iresnet34_gwp"]["params"] / 1e6, 2) == 21.56
    md = subprocess.run(
        [sys.executable, "-m", "facezoo", "models", "iresnet50_gwp"], capture_output=True, text=True, check=True
    ).stdout
    assert md.splitlines()[0].startswith("| model |") and "| iresnet50_gwp | gwp | 3x3 | 31.01 | 0.26 |" in md
    bad = subprocess.run([sys.executable, "-m", "facezoo", "models", "nope*"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no facezoo model matches" in bad.stderr


def test_gdc_checkpoint_is_refused_by_a_gap_model(tmp_path):
    """A GDC head's learned conv must not be dropped silently when the checkpoint meets a GAP / GWP model."""
    from safetensors.torch import save_file

    from facezoo.errors import CheckpointError

    gdc = timm.create_model("iresnet18_gdc")
    save_file({k: v.contiguous() for k, v in gdc.state_dict().items()}, str(tmp_path / "gdc.safetensors"))
    expected = r"unexpected keys \[pool\.bn\..*pool\.conv\.weight.*looks like iresnet18_gdc"
    with pytest.raises(CheckpointError, match=expected):
        timm.create_model(
            "iresnet18_gap", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "gdc.safetensors"))
        )
