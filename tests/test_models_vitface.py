"""Face ViTs: insightface arcface_torch ViT checkpoints load strictly and reproduce its embeddings, parameter counts,
the GWP / GAP heads over the token grid, token masking in training, float32 attention under autocast, errors."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn

import facezoo  # noqa: F401
from facezoo.errors import CheckpointError
from facezoo.models.profile import count_params
from facezoo.models.vitface import float32_attention, looks_like_vitface

# --- a reference insightface face ViT, written here from arcface_torch/backbones/vit.py's structure ----------------
# (module names and shapes as theirs; attention computed the way they do: explicit scores, softmax, weighted sum)


class RefMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).view(b, n, 3, h, d // h).unbind(2)  # each (b, n, h, d/h)
        q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
        scores = torch.einsum("bhqc,bhkc->bhqk", q, k) / math.sqrt(d // h)
        out = torch.einsum("bhqk,bhkc->bhqc", scores.softmax(-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = RefMlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefPatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 9):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RefViT(nn.Module):
    """insightface's ``VisionTransformer(img_size=112, patch_size=9, num_heads=8, norm_layer='ln')`` in eval mode."""

    def __init__(self, dim: int, depth: int, num_features: int = 512, heads: int = 8):
        super().__init__()
        tokens = (112 // 9) ** 2
        self.patch_embed = RefPatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList([RefBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.feature = nn.Sequential(
            nn.Linear(dim * tokens, dim, bias=False),
            nn.BatchNorm1d(dim, eps=2e-5),
            nn.Linear(dim, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.float())
        return self.feature(x.reshape(x.shape[0], -1))


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every bias, norm parameter, BatchNorm statistic and the position embedding (the weight
    matrices keep PyTorch's random init): every part of the network then matters to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point or (t.ndim > 1 and name != "pos_embed"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return model


INSIGHTFACE = {  # facezoo name -> insightface's (width, depth, parameters in M with E=512, flatten Linear share)
    "vitface_t": (256, 12, 19.14, 0.49),
    "vitface_s": (512, 12, 76.02, 0.50),
    "vitface_b": (512, 24, 113.83, 0.33),
    "vitface_l": (768, 24, 255.68, 0.33),
}


@pytest.mark.parametrize("name", list(INSIGHTFACE))
def test_parameter_counts_equal_insightface(name):
    width, depth, millions, share = INSIGHTFACE[name]
    with torch.device("meta"):
        ref = RefViT(width, depth)
    model = timm.create_model(name, device="meta")
    assert count_params(model) == sum(p.numel() for p in ref.parameters())
    assert round(count_params(model) / 1e6, 2) == millions
    flat = model.feature[0].weight.numel()
    assert flat == 144 * width * width
    assert round(flat / count_params(model), 2) == share
    gwp = timm.create_model(name + "_gwp", device="meta")
    assert count_params(gwp) == count_params(model) - flat  # the GWP head removes exactly the flatten Linear
    assert count_params(timm.create_model(name + "_gap", device="meta")) == count_params(gwp)


@pytest.mark.parametrize(
    "name",
    ["vitface_t", "vitface_s", pytest.param("vitface_b", marks=pytest.mark.slow)],  # b: 114M parameters
)
def test_insightface_checkpoint_loads_strictly_and_reproduces_embeddings(tmp_path, name):
    width, depth = INSIGHTFACE[name][:2]
    torch.manual_seed(0)
    ref = _randomize(RefViT(width, depth)).eval()
    path = tmp_path / "backbone.pth"
    torch.save(ref.state_dict(), path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert got.shape == (2, 512)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4
    assert count_params(model) == sum(p.numel() for p in ref.parameters())


def test_gwp_head_pools_the_token_grid_and_is_batch_independent():
    model = timm.create_model("vitface_t_gwp", depth=2).eval()
    assert not hasattr(model.feature[0], "weight")  # feature.0 (the flatten Linear) is gone
    assert [k for k in model.state_dict() if k.startswith("feature.")][0].startswith("feature.1.")
    # the paper's Gaussian on the 12x12 grid: centre between the two middle tokens, sigma 3 * 12 / 7
    sigma = 3 * 12 / 7
    g = torch.tensor(
        [[math.exp(-((i - 5.5) ** 2 + (j - 5.5) ** 2) / (2 * sigma**2)) for j in range(12)] for i in range(12)]
    )
    torch.testing.assert_close(model.pool.kernel, g / g.sum())
    x = torch.randn(5, 3, 112, 112)
    with torch.no_grad():
        grid = model.forward_features(x)
        assert grid.shape == (5, 256, 12, 12)
        pooled = (grid * (g / g.sum())).mean(dim=(2, 3))
        torch.testing.assert_close(model.feature(pooled), model(x))
        alone = torch.cat([model(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(alone, model(x), rtol=1e-5, atol=1e-5)
    gap = timm.create_model("vitface_t_gap", depth=2).eval()
    with torch.no_grad():
        grid = gap.forward_features(x)
        torch.testing.assert_close(gap(x), gap.feature(grid.mean(dim=(2, 3))))


def test_flatten_head_uses_insightface_token_order():
    model = timm.create_model("vitface_t", depth=1).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        grid = model.forward_features(x)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, 144, D)
        torch.testing.assert_close(model(x), model.feature(tokens.reshape(2, -1)))


@pytest.mark.parametrize("pool", ["gwp_sigma", "gwp_softmax"])
def test_learnable_kernels_on_gwp_vit(pool, tmp_path):
    gwp = timm.create_model("vitface_t_gwp", depth=1).eval()
    model = timm.create_model("vitface_t_gwp", depth=1, global_pool=pool).eval()
    assert model.pool_type == model.global_pool == pool
    learnable = [n for n, _ in model.named_parameters() if n.startswith("pool.")]
    assert learnable
    # a GWP checkpoint starts the learnable kernel at the paper's Gaussian: same embedding
    path = tmp_path / "gwp.pth"
    torch.save(gwp.state_dict(), path)
    loaded = timm.create_model(
        "vitface_t_gwp", depth=1, global_pool=pool, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), gwp(x), rtol=1e-5, atol=1e-5)
    loaded.train()
    loaded(x).pow(2).mean().backward()
    assert all(p.grad is not None for n, p in loaded.named_parameters() if n.startswith("pool."))
    with pytest.raises(ValueError, match="feature.0"):
        timm.create_model("vitface_t", depth=1, global_pool=pool)


def test_token_masking_in_training_only():
    model = timm.create_model("vitface_t_gwp", depth=1, drop_path_rate=0.0)
    assert model.mask_ratio == 0.1 and model.num_keep == int(144 * 0.9)
    x = torch.randn(3, 3, 112, 112)
    grid = model.train().forward_features(x)
    tokens = grid.flatten(2).transpose(1, 2)
    is_mask = (tokens == model.mask_token.to(tokens.dtype)).all(-1)
    assert is_mask.sum(1).tolist() == [144 - model.num_keep] * 3  # each sample: its own 15 masked tokens
    assert not torch.equal(is_mask[0], is_mask[1])
    model(x).mean().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    with torch.no_grad():
        grid = model.eval().forward_features(x)
    assert not (grid.flatten(2).transpose(1, 2) == model.mask_token).all(-1).any()
    unmasked = timm.create_model("vitface_t_gwp", depth=1, mask_ratio=0.0).train()
    unmasked(x).mean().backward()  # no masking: mask_token takes part with a zero gradient (DDP needs every param)
    assert [n for n, p in unmasked.named_parameters() if p.grad is None] == []
    assert unmasked.mask_token.grad.abs().sum() == 0
    assert timm.create_model("vitface_h", device="meta").mask_ratio == 0.0
    assert timm.create_model("vitface_l", device="meta").mask_ratio == 0.05


def test_attention_softmax_in_float32_under_autocast():
    q, k, v = (torch.randn(2, 8, 144, 32) for _ in range(3))
    naive = (q @ k.transpose(-2, -1) / math.sqrt(32)).softmax(-1) @ v
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = float32_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
        half = torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.float32 and half.dtype == torch.bfloat16
    ref = (q.bfloat16().float() @ k.bfloat16().float().transpose(-2, -1) / math.sqrt(32)).softmax(-1)
    torch.testing.assert_close(out, ref @ v.bfloat16().float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(float32_attention(q, k, v), naive, rtol=1e-5, atol=1e-5)
    model = timm.create_model("vitface_t_gwp", depth=1).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(torch.randn(2, 3, 112, 112))).all()


def test_checkpoint_of_another_head_or_family_names_what_it_looks_like(tmp_path):
    ref = RefViT(256, 2)
    path = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"feature\.0\.weight.*looks like a face ViT with width 256, depth 2"):
        timm.create_model("vitface_t_gwp", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    full = RefViT(256, 12).state_dict()
    assert looks_like_vitface(full) == "vitface_t"
    assert looks_like_vitface({k: v for k, v in full.items() if k != "feature.0.weight"}) == "vitface_t_gwp (or _gap)"
    assert looks_like_vitface(timm.create_model("iresnet18", device="meta").state_dict()) is None
    vit_t = tmp_path / "vit_t.pth"
    torch.save(full, vit_t)
    with pytest.raises(CheckpointError, match="looks like vitface_t"):  # another family names the ViT
        timm.create_model("iresnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(vit_t)))
    iresnet = tmp_path / "r18.pth"
    torch.save(timm.create_model("iresnet18").state_dict(), iresnet)
    with pytest.raises(CheckpointError, match="looks like iresnet18"):
        timm.create_model("vitface_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(iresnet)))


def test_face_facts_and_names():
    model = timm.create_model("vitface_s_gwp", device="meta")
    assert model.family == "vitface" and model.layout == "insightface"
    assert model.pool_type == model.global_pool == "gwp"
    assert model.embed_dim == 512 and model.width == 512 and model.stem_kernel == 9  # stem_kernel: the patch size
    assert timm.create_model("vitface_t", embed_dim=128, device="meta").embed_dim == 128
    assert timm.create_model("vitface_t", embed_dim=128, device="meta").width == 256
    assert len(timm.list_models("vitface_*")) == 18  # 5 insightface sizes and CVLface's ViT-B/8, 3 heads each
