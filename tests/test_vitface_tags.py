"""The CVLface ViT tag (``vitface_b_p8.adaface_webface4m``): its Hub repository, laid out here in an offline Hugging
Face cache, loads by name through timm and reproduces CVLface's own ViT forward on RGB input."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from test_pretrained_tags import offline_hub, one_thread, write_cvlface_repo  # noqa: F401  (fixtures)

import facezoo  # noqa: F401
from facezoo.errors import CheckpointError, HubError
from facezoo.models.pretrained import pretrained_info
from facezoo.models.vitface import looks_like_vitface

TAG = "vitface_b_p8.adaface_webface4m"
REPO = "minchul/cvlface_adaface_vit_base_webface4m"
#: a narrow, shallow version of the network (patch, grid, heads, MLP ratio as published); the test stays fast
SMALL = dict(width=64, depth=2, embed_dim=32)
#: the model config of CVLface's ViT-B (models/vit/configs/v1_base.yaml)
VIT_CONF = {
    "name": "base",
    "mask_ratio": 0.0,
    "output_dim": SMALL["embed_dim"],
    "yaml_path": "models/vit/configs/v1_base.yaml",
}

# --- CVLface's ViT, written here from cvlface/research/recognition/code/run_v1/models/vit/ ------------------------


class CVLAttention(nn.Module):
    """Bias-free ``qkv``, softmax(q k^T * head_dim^-0.5) v in the input dtype, ``proj`` with bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class CVLMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.ReLU6(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CVLBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), CVLAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), CVLMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CVLPatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class CVLfaceViT(nn.Module):
    """``VisionTransformer`` as ``ViTModel.from_config`` builds it for ``name: 'base'`` (patch 8, 16 heads, MLP ratio
    3) with ``mask_ratio: 0.0``: no mask_token; the head flattens the 196 tokens (token-major) into
    Linear(196 * D, D, no bias), BN1d(D, eps 2e-5), Linear(D, E, no bias), BN1d(E, eps 2e-5)."""

    def __init__(self, width: int = 512, depth: int = 24, embed: int = 512, heads: int = 16, mlp_ratio: float = 3.0):
        super().__init__()
        tokens = (112 // 8) ** 2
        self.patch_embed = CVLPatchEmbed(8, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.ModuleList([CVLBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.feature = nn.Sequential(
            nn.Linear(width * tokens, width, bias=False),
            nn.BatchNorm1d(width, eps=2e-5),
            nn.Linear(width, embed, bias=False),
            nn.BatchNorm1d(embed, eps=2e-5),
        )

    def forward(self, x):
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.float())
        return self.feature(x.reshape(x.shape[0], -1))


def source_network(seed: int = 0) -> CVLfaceViT:
    """The small CVLface ViT with every parameter and BatchNorm statistic random (a wrong map would show)."""
    torch.manual_seed(seed)
    net = CVLfaceViT(SMALL["width"], SMALL["depth"], SMALL["embed_dim"])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 1 or name == "pos_embed":
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return net.eval()


def add_repo(hub, net: nn.Module, color_space: str = "RGB", yaml: bool = True) -> None:
    hub(REPO, lambda d: write_cvlface_repo(d, net, REPO, color_space, yaml=yaml, conf_override=VIT_CONF))


def _relative_error(model: nn.Module, net: nn.Module, bgr: bool) -> float:
    """|facezoo(rgb) - CVLface(its input)| / |CVLface(its input)|, its input being BGR for a BGR source."""
    rgb = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model.eval()(rgb), net.eval()(rgb.flip(1) if bgr else rgb)
    return float((got - want).norm() / want.norm())


# --- the tag ----------------------------------------------------------------------------------------------------------


def test_the_tag_is_registered_as_the_default_of_vitface_b_p8():
    info, cfg = pretrained_info(TAG), timm.get_pretrained_cfg(TAG)
    assert timm.get_pretrained_cfg("vitface_b_p8").tag == "adaface_webface4m"
    assert (cfg.hf_hub_id, cfg.hf_hub_filename, cfg.license) == (REPO, "model.safetensors", "other")
    assert cfg.pool_size == (14, 14) and cfg.input_size == (3, 112, 112)
    assert info.dataset == "WebFace4M" and info.loss == "AdaFace" and "non-commercial" in info.license_note
    assert info.reported["LFW"] == 99.80 and info.reported["IJB-C@0.01"] == 97.14  # CVLface's board, its ViT row
    assert info.reported["IJB-B@0.01"] == 95.60 and info.reported["AVG"] == 92.48


@pytest.mark.parametrize("color_space", ["RGB", "BGR"])
def test_tag_loads_from_its_hub_repository_and_matches_cvlface(offline_hub, color_space):  # noqa: F811
    net = source_network()
    add_repo(offline_hub, net, color_space)
    model = timm.create_model(TAG, pretrained=True, **SMALL)
    assert model.pretrained_cfg["tag"] == "adaface_webface4m" and model.mask_token is None
    assert _relative_error(model, net, bgr=color_space == "BGR") < 1e-4
    if color_space == "BGR":  # the flip is needed: the same weights read as RGB give another embedding
        assert _relative_error(model, net, bgr=False) > 1e-2


def test_default_tag_loads_with_pretrained_true(offline_hub):  # noqa: F811
    net = source_network(seed=3)
    add_repo(offline_hub, net)
    assert _relative_error(timm.create_model("vitface_b_p8", pretrained=True, **SMALL), net, bgr=False) < 1e-4
    plain = timm.create_model("vitface_b_p8", **SMALL)  # no weights: the plain cfg, claiming none
    assert plain.pretrained_cfg.get("hf_hub_id") is None and plain.pretrained_cfg.get("license") is None


def test_missing_model_yaml_is_one_error_naming_the_repository(offline_hub):  # noqa: F811
    add_repo(offline_hub, source_network(), yaml=False)
    with pytest.raises((CheckpointError, HubError), match=rf"^{REPO}: no pretrained_model/model.yaml"):
        timm.create_model(TAG, pretrained=True, **SMALL)


# --- the architecture -------------------------------------------------------------------------------------------------


def test_full_size_parameters_equal_cvlfaces_vit_base():
    with torch.device("meta"):
        ref = CVLfaceViT()
    model = timm.create_model("vitface_b_p8", device="meta")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters()) == 114_869_760
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ref.state_dict().items()
    }
    assert model.grid_size == (14, 14) and model.patch_size == 8 and len(model.blocks) == 24
    assert model.blocks[0].attn.num_heads == 16 and model.blocks[0].mlp.fc1.out_features == 3 * 512
    assert looks_like_vitface(ref.state_dict()) == "vitface_b_p8"
    gwp = timm.create_model("vitface_b_p8_gwp", device="meta")
    assert tuple(gwp.pool.kernel.shape) == (14, 14)
    assert sum(p.numel() for p in gwp.parameters()) == 114_869_760 - 196 * 512 * 512  # no flatten Linear


def test_no_mask_token_trains_with_every_parameter_getting_a_gradient():
    model = timm.create_model("vitface_b_p8_gwp", **SMALL).train()
    model(torch.randn(2, 3, 112, 112)).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert "mask_token" not in model.state_dict()
    with pytest.raises(ValueError, match=r"mask_ratio 0.1 needs a mask_token"):
        timm.create_model("vitface_b_p8", mask_ratio=0.1, **SMALL)
