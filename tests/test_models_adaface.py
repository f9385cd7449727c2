"""AdaFace / TFace / CVLface "IR" checkpoints in facezoo's IResNet (``layout='adaface'``), loaded through timm."""

from __future__ import annotations

import logging
import pathlib
from collections import Counter, namedtuple

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import facezoo  # noqa: F401
from facezoo.cli import main as facezoo_main
from facezoo.errors import CheckpointError
from facezoo.models.profile import count_params

# --- a reference AdaFace IR backbone, written here from AdaFace's net.py (Backbone, mode='ir', depths 18-100) --------


class Flatten(nn.Module):
    def forward(self, input):
        return input.view(input.size(0), -1)


class BasicBlockIR(nn.Module):
    def __init__(self, in_channel, depth, stride):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x):
        shortcut = self.shortcut_layer(x)
        res = self.res_layer(x)
        return res + shortcut


class Bottleneck(namedtuple("Block", ["in_channel", "depth", "stride"])):
    """A named tuple describing a ResNet block."""


def get_block(in_channel, depth, num_units, stride=2):
    return [Bottleneck(in_channel, depth, stride)] + [Bottleneck(depth, depth, 1) for _ in range(num_units - 1)]


def get_blocks(num_layers):
    units = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 14, 3], 100: [3, 13, 30, 3]}[num_layers]
    return [
        get_block(64, 64, units[0]),
        get_block(64, 128, units[1]),
        get_block(128, 256, units[2]),
        get_block(256, 512, units[3]),
    ]


def initialize_weights(modules):
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm1d) and m.affine:
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                m.bias.data.zero_()


class Backbone(nn.Module):
    """AdaFace's ``Backbone(input_size=(112, 112), num_layers, mode='ir')``; takes BGR input, returns (emb, norm)."""

    def __init__(self, input_size=(112, 112), num_layers=18):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        output_channel = 512
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(output_channel),
            nn.Dropout(0.4),
            Flatten(),
            nn.Linear(output_channel * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=False),
        )
        modules = []
        for block in get_blocks(num_layers):
            for bottleneck in block:
                modules.append(BasicBlockIR(bottleneck.in_channel, bottleneck.depth, bottleneck.stride))
        self.body = nn.Sequential(*modules)
        initialize_weights(self.modules())

    def forward(self, x):
        x = self.input_layer(x)
        for module in self.body:
            x = module(x)
        x = self.output_layer(x)
        norm = torch.norm(x, 2, 1, True)
        output = torch.div(x, norm)
        return output, norm


def _reference(num_layers: int = 18) -> Backbone:
    """A random AdaFace IR with non-trivial BatchNorm statistics (so a wrong key map would show), in eval mode."""
    torch.manual_seed(0)
    ref = Backbone(num_layers=num_layers)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(1000)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return ref.eval()


def _lightning_ckpt(ref: Backbone, **extra) -> dict:
    """What AdaFace's Lightning training writes: backbone under 'model.', the margin head beside it, training state."""
    state_dict = {f"model.{k}": v for k, v in ref.state_dict().items()}
    state_dict["head.kernel"] = torch.randn(512, 10)
    state_dict["head.t"] = torch.zeros(1)
    return {
        "epoch": 25,
        "global_step": 1000,
        "pytorch-lightning_version": "1.8.6",
        "state_dict": state_dict,
        "hyper_parameters": {"arch": "ir_18", "lr": 0.1, "m": 0.4, "h": 0.333},
        "lr_schedulers": [{"milestones": Counter({12: 1, 20: 1, 24: 1}), "last_epoch": 25}],
        **extra,
    }


def _assert_matches_reference(model: nn.Module, ref: Backbone) -> None:
    """facezoo(rgb) == AdaFace(bgr): the unnormalized embedding (AdaFace's output * norm), in fp64."""
    model, ref = model.eval().double(), ref.eval().double()
    rgb = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        emb = model(rgb)
        out, norm = ref(rgb.flip(1))
    torch.testing.assert_close(emb, out * norm, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(F.normalize(emb), out, rtol=1e-10, atol=1e-10)


def _load(name: str, path, **kwargs) -> nn.Module:
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


# --- loading ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lightning_ckpt", "plain_pth"])
def test_adaface_checkpoint_loads_and_matches_reference(tmp_path, caplog, kind):
    ref = _reference()
    path = tmp_path / ("adaface_ir18.ckpt" if kind == "lightning_ckpt" else "adaface_ir18.pth")
    torch.save(_lightning_ckpt(ref) if kind == "lightning_ckpt" else ref.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="facezoo.models.checkpoints"):
        model = _load("iresnet18", path, layout="adaface")
    if kind == "lightning_ckpt":
        assert "dropped 2 keys outside the backbone" in caplog.text and "head.kernel" in caplog.text
    _assert_matches_reference(model, ref)


def test_facezoo_checkpoint_of_adaface_layout_round_trips(tmp_path):
    """A layout='adaface' model saved by facezoo (already RGB, facezoo keys) loads back unchanged."""
    ref = _reference()
    torch.save(ref.state_dict(), tmp_path / "adaface.pth")
    model = _load("iresnet18", tmp_path / "adaface.pth", layout="adaface")
    torch.save(model.state_dict(), tmp_path / "facezoo.pth")
    _assert_matches_reference(_load("iresnet18", tmp_path / "facezoo.pth", layout="adaface"), ref)
    with pytest.raises(ValueError, match="iresnet18 with layout='adaface'"):
        _load("iresnet18", tmp_path / "facezoo.pth")


# --- clear errors ----------------------------------------------------------------------------------------------------


def test_adaface_checkpoint_into_insightface_layout_names_the_kwarg(tmp_path):
    torch.save(_lightning_ckpt(_reference()), tmp_path / "adaface_ir18.ckpt")
    with pytest.raises(ValueError) as e:
        _load("iresnet18", tmp_path / "adaface_ir18.ckpt")
    msg = str(e.value)
    assert "AdaFace" in msg and "built without layout='adaface'" in msg
    assert "Pass layout='adaface': timm.create_model('iresnet18', layout='adaface', pretrained=True" in msg


def test_insightface_checkpoint_into_adaface_layout_fails_clearly(tmp_path):
    torch.save(timm.create_model("iresnet18").state_dict(), tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="insightface-layout checkpoint.*iresnet18.*Leave out layout='adaface'"):
        _load("iresnet18", tmp_path / "backbone.pth", layout="adaface")


def test_wrong_depth_and_unsupported_variants(tmp_path):
    sd = _reference().state_dict()
    torch.save(sd, tmp_path / "ir18.pth")
    with pytest.raises(ValueError, match="missing keys.*layer1.2.*looks like iresnet18 with layout='adaface'"):
        _load("iresnet34", tmp_path / "ir18.pth", layout="adaface")
    se = dict(sd, **{"body.0.res_layer.se_block.fc1.weight": torch.zeros(4, 64, 1, 1)})  # AdaFace's IR-SE
    torch.save(se, tmp_path / "ir_se.pth")
    with pytest.raises(ValueError, match="IR-SE.*bottleneck"):
        _load("iresnet18", tmp_path / "ir_se.pth", layout="adaface")
    with pytest.raises(ValueError, match="layout must be one of"):
        timm.create_model("iresnet18", layout="tface", device="meta")


def _side_effect(path):  # a pickled call the loader must never make
    pathlib.Path(path).write_text("ran")


class _SideEffect:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _side_effect, (self.path,)


def test_refused_hyperparameters_point_to_convert_checkpoint(tmp_path, capsys):
    ref = _reference()
    marker = tmp_path / "marker"
    ckpt = _lightning_ckpt(ref, hparams_path=pathlib.PurePosixPath("/runs/ir18"), callbacks={"x": _SideEffect(marker)})
    torch.save(ckpt, tmp_path / "adaface_ir18.ckpt")
    with pytest.raises(CheckpointError) as e:
        _load("iresnet18", tmp_path / "adaface_ir18.ckpt", layout="adaface")
    msg = str(e.value)
    assert "weights_only=True" in msg and "pathlib.PurePosixPath" in msg
    assert "facezoo models convert-checkpoint" in msg
    out = tmp_path / "weights.safetensors"
    assert facezoo_main(["models", "convert-checkpoint", str(tmp_path / "adaface_ir18.ckpt"), str(out)]) == 0
    assert "pathlib.PurePosixPath" in capsys.readouterr().out
    assert not marker.exists()  # the pickled call was replaced by a placeholder, never made
    _assert_matches_reference(_load("iresnet18", out, layout="adaface"), ref)


class _HParams(dict):
    pass


def test_convert_checkpoint_refuses_what_it_cannot_read_safely(tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": _HParams(lr=0.1)}, tmp_path / "x.ckpt")
    argv = ["models", "convert-checkpoint", str(tmp_path / "x.ckpt"), str(tmp_path / "x.safetensors")]
    assert facezoo_main(argv) == 2
    err = capsys.readouterr().err
    assert "unpickles nothing else" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


# --- architecture ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 50])
def test_parameter_count_equals_reference(depth):
    with torch.device("meta"):
        ref = Backbone(num_layers=depth)
    trainable = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    model = timm.create_model(f"iresnet{depth}", layout="adaface", device="meta")
    assert sum(p.numel() for p in model.parameters()) == trainable == count_params(model)
    default = timm.create_model(f"iresnet{depth}", device="meta")  # insightface: conv shortcut (64*64 + BN) + beta
    assert sum(p.numel() for p in default.parameters()) - trainable == 64 * 64 + 2 * 64 + 512


@pytest.mark.parametrize("name", ["iresnet18", "iresnet18_gap", "iresnet18_gwp_k7", "iresnet18_gdc"])
def test_layout_composes_with_every_head(name):
    model = timm.create_model(name, layout="adaface", num_classes=42)
    assert isinstance(model.layer1[0].downsample, nn.MaxPool2d) and isinstance(
        model.layer2[0].downsample, nn.Sequential
    )
    assert model.features.weight is None and model.features.bias is None
    model.train()
    model(torch.randn(2, 3, 112, 112)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())  # timm: every parameter trains


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_features_only_forward_intermediates_and_torchscript():
    x = torch.randn(1, 3, 32, 32)
    torch.manual_seed(0)
    feats = timm.create_model("iresnet18", layout="adaface", features_only=True).eval()
    with torch.no_grad():
        outs = feats(x)
    assert [o.shape[1:] for o in outs] == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    torch.manual_seed(0)  # the same weights as ``feats``
    model = timm.create_model("iresnet18", layout="adaface").eval()
    with torch.no_grad():
        inter = model.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(inter, outs):
            torch.testing.assert_close(a, b)
        x = torch.randn(1, 3, 112, 112)
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))
