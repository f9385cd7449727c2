"""Learnable GWP kernels ('gwp_sigma', 'gwp_softmax'): GWP at initialization, then they train, save and load."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file

import facezoo  # noqa: F401
from facezoo.layers import (
    POOL_TYPES,
    GaussianWeightedPool,
    LearnableSigmaGWP,
    SoftmaxKernelGWP,
    create_face_pool,
)
from facezoo.models.profile import count_params

TINY = dict(layers=[1, 1, 1, 1], widths=[8, 16, 32, 64], img_size=32)


def paper_gwp(x: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """Eq. 2-4 of the paper by hand on a 7x7 map: centre 3, normalized, Hadamard product, then GAP."""
    g = torch.tensor(
        [[math.exp(-((i - 3) ** 2 + (j - 3) ** 2) / (2 * sigma**2)) for j in range(7)] for i in range(7)],
        dtype=torch.float64,
    )
    return (x * (g / g.sum()).to(x.dtype)).mean(dim=(2, 3))


@pytest.mark.parametrize("kind, n_params", [("gwp_sigma", 1), ("gwp_softmax", 49)])
def test_learnable_kernel_is_gwp_at_init(kind, n_params):
    assert kind in POOL_TYPES
    pool, width = create_face_pool(kind, 16, (7, 7))
    assert width == 16 and sum(p.numel() for p in pool.parameters()) == n_params
    x = torch.randn(4, 16, 7, 7)
    torch.testing.assert_close(pool(x), GaussianWeightedPool(7)(x), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pool(x.double()), paper_gwp(x.double()), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(pool.kernel_for(7, 7).sum(), torch.tensor(1.0, dtype=torch.float64))
    # another map size: still a normalized kernel (sigma scaled / logits resized)
    assert pool(torch.randn(2, 16, 9, 9)).shape == (2, 16)


def test_sigma_stays_positive_and_kernel_normalized():
    pool = LearnableSigmaGWP(7)
    with torch.no_grad():
        pool.log_sigma_scale.fill_(-20.0)  # any value of the parameter is a valid (tiny) sigma
    sy, sx = pool.sigma()
    assert sy.item() > 0 and sx.item() > 0
    soft = SoftmaxKernelGWP(7)
    with torch.no_grad():
        soft.logits.normal_()
    torch.testing.assert_close(soft.kernel_for(7, 7).sum().item(), 1.0)
    assert (soft.kernel_for(7, 7) > 0).all()


@pytest.mark.parametrize("kind, key", [("gwp_sigma", "pool.log_sigma_scale"), ("gwp_softmax", "pool.logits")])
def test_learnable_kernel_trains_saves_and_loads(tmp_path, kind, key):
    torch.manual_seed(0)
    model = timm.create_model("iresnet18_gwp_k7", global_pool=kind, **TINY)
    gwp = timm.create_model("iresnet18_gwp_k7", **TINY)
    gwp.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(4, 3, 32, 32)
    model.eval(), gwp.eval()
    torch.testing.assert_close(model(x), gwp(x), rtol=1e-5, atol=1e-6)  # GWP at initialization
    assert key in model.state_dict() and model.pool_type == model.global_pool == kind
    assert count_params(model) == count_params(gwp) + (1 if kind == "gwp_sigma" else 4)  # 2x2 map at 32x32

    start = model.state_dict()[key].clone()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        loss = model(x).pow(2).sum()
        loss.backward()
        assert dict(model.named_parameters())[key].grad.abs().sum() > 0
        opt.step()
    learned = model.state_dict()[key]
    assert not torch.equal(learned, start)

    path = tmp_path / "learned.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = timm.create_model(
        "iresnet18_gwp_k7", global_pool=kind, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY
    )
    torch.testing.assert_close(loaded.state_dict()[key], learned)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_gwp_checkpoint_starts_a_learnable_kernel_at_the_paper(tmp_path):
    """A plain GWP checkpoint has no kernel key: the learnable kernel starts at the paper's Gaussian."""
    gwp = timm.create_model("iresnet18_gwp_k7", **TINY).eval()
    path = tmp_path / "gwp.safetensors"
    save_file({k: v.contiguous() for k, v in gwp.state_dict().items()}, str(path))
    for kind in ("gwp_sigma", "gwp_softmax"):
        model = timm.create_model(
            "iresnet18_gwp_k7", global_pool=kind, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY
        ).eval()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model(x), gwp(x), rtol=1e-5, atol=1e-6)


def test_learned_kernel_checkpoint_into_a_plain_gwp_model_is_named(tmp_path):
    from facezoo.errors import CheckpointError

    path = tmp_path / "soft.safetensors"
    soft = timm.create_model("iresnet18_gwp_k7", global_pool="gwp_softmax", **TINY)
    save_file({k: v.contiguous() for k, v in soft.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected keys \[pool\.logits\].*with global_pool='gwp_softmax'"):
        timm.create_model("iresnet18_gwp_k7", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY)


def test_full_size_create_model_and_switching():
    model = timm.create_model("iresnet50_gwp_k7", global_pool="gwp_softmax", device="meta")
    assert isinstance(model.pool, SoftmaxKernelGWP) and tuple(model.pool.logits.shape) == (7, 7)
    tiny = timm.create_model("iresnet18_gap", **TINY)
    for kind in ("gwp", "gwp_sigma", "gwp_softmax", "avg"):
        tiny.reset_classifier(0, kind)
        assert tiny.global_pool == kind
        assert tiny(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_switch_error_names_each_choice_once():
    gwp = timm.create_model("iresnet18_gwp", **TINY)
    with pytest.raises(ValueError) as err:
        gwp.reset_classifier(0, "flatten")
    message = str(err.value)
    assert "allowed: '', 'avg', 'gwp', 'gwp_sigma', 'gwp_softmax'" in message
    allowed = message.split("allowed: ")[1].split(", ")
    assert len(allowed) == len(set(allowed)) == 5  # each choice once (it used to list 'gwp' twice)
    gdc = timm.create_model("iresnet18_gdc", **TINY)
    with pytest.raises(ValueError, match=r"allowed: '', 'gdc'$"):
        gdc.reset_classifier(0, "gwp_softmax")
