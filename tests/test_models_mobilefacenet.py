"""MobileFaceNet: insightface's mbf / mbf_large checkpoints load as they are, GWP / GAP heads, checkpoint errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import facezoo  # noqa: F401
from facezoo.errors import CheckpointError
from facezoo.models.profile import count_params

# --- a reference MobileFaceNet, written here from arcface_torch/backbones/mobilefacenet.py's structure ---------------
# (its key names and shapes: every unit keeps its ops in a `layers` Sequential; PReLU per channel; BN eps 1e-5)


def ref_conv(cin, cout, k=1, s=1, p=0, g=1, act=True):
    ops = [nn.Conv2d(cin, cout, k, s, p, groups=g, bias=False), nn.BatchNorm2d(cout)]
    unit = nn.Module()
    unit.layers = nn.Sequential(*(ops + [nn.PReLU(cout)] if act else ops))
    unit.forward = unit.layers.forward
    return unit


class RefDepthWise(nn.Module):
    def __init__(self, cin, cout, residual, stride, groups):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ref_conv(cin, groups), ref_conv(groups, groups, 3, stride, 1, groups), ref_conv(groups, cout, act=False)
        )

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.residual else y


def ref_residual(c, n, groups):
    unit = nn.Module()
    unit.layers = nn.Sequential(*[RefDepthWise(c, c, True, 1, groups) for _ in range(n)])
    unit.forward = unit.layers.forward
    return unit


class RefMobileFaceNet(nn.Module):
    """insightface's ``MobileFaceNet(num_features=512, blocks, scale)`` (get_mbf / get_mbf_large), GDC head."""

    def __init__(self, blocks=(1, 4, 6, 2), scale=2, num_features=512):
        super().__init__()
        a, b = 64 * scale, 128 * scale
        first = ref_conv(a, a, 3, 1, 1, 64) if blocks[0] == 1 else ref_residual(a, blocks[0], 128)
        self.layers = nn.ModuleList(
            [
                ref_conv(3, a, 3, 2, 1),
                first,
                RefDepthWise(a, a, False, 2, 128),
                ref_residual(a, blocks[1], 128),
                RefDepthWise(a, b, False, 2, 256),
                ref_residual(b, blocks[2], 256),
                RefDepthWise(b, b, False, 2, 512),
                ref_residual(b, blocks[3], 256),
            ]
        )
        self.conv_sep = ref_conv(b, 512)
        gdc = nn.Module()
        gdc.layers = nn.Sequential(
            ref_conv(512, 512, 7, 1, 0, 512, act=False), nn.Flatten(), nn.Linear(512, num_features, bias=False)
        )
        gdc.layers.append(nn.BatchNorm1d(num_features))
        gdc.forward = gdc.layers.forward
        self.features = gdc

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


def _randomize(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and PReLU slopes, so a wrong key or order changes the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)


@pytest.mark.parametrize(
    "name, blocks, scale, n_params",
    [
        ("mobilefacenet", (1, 4, 6, 2), 2, 2_059_520),
        ("mobilefacenet_large", (2, 8, 12, 4), 4, 6_314_880),
    ],
)
def test_insightface_mbf_checkpoint_loads_strictly_and_reproduces(tmp_path, name, blocks, scale, n_params):
    torch.manual_seed(0)
    ref = RefMobileFaceNet(blocks, scale)
    _randomize(ref)
    ref.eval()
    path = tmp_path / "mbf" / "backbone.pth"
    path.parent.mkdir()
    torch.save(ref.state_dict(), path)  # a plain state_dict, as arcface_torch's backbone.pth
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert sum(p.numel() for p in ref.parameters()) == count_params(model) == n_params
    assert set(model.state_dict()) == set(ref.state_dict())
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        expected, out = ref(x), model(x)
    assert ((out - expected).norm() / expected.norm()).item() < 1e-4


def test_gwp_heads_drop_the_gdc_parameters_and_are_batch_independent():
    gdc = timm.create_model("mobilefacenet").eval()
    removed = 512 * 49 + 2 * 512  # the depthwise 7x7 conv and its BatchNorm's affine parameters
    for name in ("mobilefacenet_gwp", "mobilefacenet_gap"):
        model = timm.create_model(name).eval()
        assert count_params(gdc) - count_params(model) == removed
        x = torch.randn(4, 3, 112, 112)
        with torch.no_grad():
            torch.testing.assert_close(model(x[1:2]), model(x)[1:2], rtol=1e-5, atol=1e-6)
            assert model(torch.randn(2, 3, 96, 96)).shape == (2, 512)  # no fixed map size
    with pytest.raises(ValueError, match="7x7 feature map"):
        gdc(torch.randn(1, 3, 96, 96))
    assert timm.get_pretrained_cfg("mobilefacenet").fixed_input_size
    assert not timm.get_pretrained_cfg("mobilefacenet_gwp").fixed_input_size


def test_face_facts_and_cfg():
    model = timm.create_model("mobilefacenet_gwp", embed_dim=128, device="meta")
    assert (model.family, model.pool_type, model.global_pool, model.embed_dim, model.layout) == (
        "mobilefacenet",
        "gwp",
        "gwp",
        128,
        "insightface",
    )
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 112, 112) and cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["first_conv"] == "layers.0.layers.0" and isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)


def test_learnable_kernel_heads_equal_gwp_at_init():
    torch.manual_seed(0)
    gwp = timm.create_model("mobilefacenet_gwp").eval()
    x = torch.randn(2, 3, 112, 112)
    for kind, key, n in (("gwp_sigma", "log_sigma_scale", 1), ("gwp_softmax", "logits", 49)):
        model = timm.create_model("mobilefacenet_gwp", global_pool=kind).eval()
        missing, _ = model.load_state_dict(gwp.state_dict(), strict=False)
        assert missing == [f"features.layers.0.{key}"]
        assert count_params(model) == count_params(gwp) + n
        with torch.no_grad():
            torch.testing.assert_close(model(x), gwp(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_of_another_family_or_head_is_named(tmp_path):
    mbf = tmp_path / "mbf.pth"
    torch.save(timm.create_model("mobilefacenet").state_dict(), mbf)
    with pytest.raises(CheckpointError, match="looks like mobilefacenet[.]"):
        timm.create_model("iresnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(mbf)))
    with pytest.raises(
        CheckpointError, match=r"unexpected keys \[features\.layers\.0\.layers.*looks like mobilefacenet"
    ):
        timm.create_model("mobilefacenet_gwp", pretrained=True, pretrained_cfg_overlay=dict(file=str(mbf)))
    ir = tmp_path / "ir.pth"
    torch.save(timm.create_model("iresnet18_gwp", layers=[1, 1, 1, 1], widths=[8, 16, 32, 64]).state_dict(), ir)
    with pytest.raises(CheckpointError, match="looks like an IResNet with blocks"):
        timm.create_model("mobilefacenet", pretrained=True, pretrained_cfg_overlay=dict(file=str(ir)))
    soft = tmp_path / "soft.pth"
    torch.save(timm.create_model("mobilefacenet_large_gwp", global_pool="gwp_softmax").state_dict(), soft)
    with pytest.raises(CheckpointError, match="looks like mobilefacenet_large_gwp with global_pool='gwp_softmax'"):
        timm.create_model("mobilefacenet_gwp", pretrained=True, pretrained_cfg_overlay=dict(file=str(soft)))


def test_fp16_flag_runs_the_head_in_float32():
    model = timm.create_model("mobilefacenet_gwp", fp16=True).eval()
    plain = timm.create_model("mobilefacenet_gwp").eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        out = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, plain(x))  # CPU: no autocast, same numbers
