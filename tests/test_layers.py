"""GWP kernel and pooling layers against the paper's equations, computed here by hand."""

from __future__ import annotations

import math

import pytest
import torch

from facezoo.layers import (
    FlattenPool,
    GaussianWeightedPool,
    GlobalAvgPool,
    GlobalDepthwiseConv,
    gaussian_kernel,
    gwp_sigma_for_size,
)


def paper_kernel(k: int, sigma: float) -> list:
    """Eq. 2-3 of the paper with plain Python floats: centre index k // 2, normalized to sum 1."""
    c = k // 2
    g = [[math.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma**2)) for x in range(k)] for y in range(k)]
    total = sum(map(sum, g))
    return [[v / total for v in row] for row in g]


def test_kernel_exact_values_7x7_sigma3():
    g = gaussian_kernel(7, 3.0, dtype=torch.float64)
    expected = torch.tensor(paper_kernel(7, 3.0), dtype=torch.float64)
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-15)
    # spot values: centre and corner of the paper's 7x7 / sigma 3 kernel
    # centre = 1 / (sum_d exp(-d^2 / 18))^2 over d = -3..3
    assert g[3, 3].item() == pytest.approx(1 / (1 + 2 * sum(math.exp(-d * d / 18) for d in (1, 2, 3))) ** 2)
    assert g[3, 3].item() == pytest.approx(0.030709, abs=1e-6)
    assert g[0, 0].item() == pytest.approx(g[3, 3].item() * math.exp(-18 / 18), rel=1e-12)


def test_kernel_sum_max_symmetry():
    for size in (7, 8, (7, 9)):
        g = gaussian_kernel(size, dtype=torch.float64)
        assert g.sum().item() == pytest.approx(1.0, abs=1e-12)
        torch.testing.assert_close(g, g.flip(0))
        torch.testing.assert_close(g, g.flip(1))
        if isinstance(size, int):
            torch.testing.assert_close(g, g.T)
    g7 = gaussian_kernel(7)
    assert g7.argmax().item() == 3 * 7 + 3  # the centre
    assert (g7 <= g7[3, 3]).all()


def test_default_sigma_is_paper_sigma_scaled_with_map():
    assert gwp_sigma_for_size(7) == 3.0
    assert gwp_sigma_for_size(14) == 6.0
    torch.testing.assert_close(gaussian_kernel(7), gaussian_kernel(7, 3.0))
    with pytest.raises(ValueError, match="positive"):
        gaussian_kernel(7, 0.0)


def test_gwp_is_weighted_sum_over_hw():
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    pool = GaussianWeightedPool(7).double()
    g = torch.tensor(paper_kernel(7, 3.0), dtype=torch.float64)
    expected = (x * g).mean(dim=(2, 3))  # eq. 4, then GAP
    torch.testing.assert_close(pool(x), expected)


def test_uniform_kernel_gives_gap():
    x = torch.randn(3, 5, 7, 7)
    pool = GaussianWeightedPool(7)
    pool.kernel.fill_(1.0)  # uniform weights: the Hadamard product is a no-op, what is left is GAP
    torch.testing.assert_close(pool(x), GlobalAvgPool()(x))
    # a very wide Gaussian tends to the uniform (normalized) kernel: GWP -> GAP / (H * W)
    wide = GaussianWeightedPool(7, sigma=1e6)
    torch.testing.assert_close(wide(x), GlobalAvgPool()(x) / 49, rtol=1e-5, atol=1e-7)


def test_kernel_is_buffer_not_parameter_nor_checkpoint_key():
    pool = GaussianWeightedPool(7)
    assert not list(pool.parameters())
    assert "kernel" in dict(pool.named_buffers())
    assert "kernel" not in pool.state_dict()
    assert pool.to(torch.float64).kernel.dtype == torch.float64


def test_gwp_other_map_size_uses_scaled_kernel():
    pool = GaussianWeightedPool(7)
    x = torch.randn(1, 2, 8, 8)
    expected = (x * gaussian_kernel(8, 3.0 * 8 / 7)).mean(dim=(2, 3))
    torch.testing.assert_close(pool(x), expected)


def test_flatten_and_gdc_need_fixed_map():
    x = torch.randn(2, 8, 7, 7)
    assert FlattenPool(7)(x).shape == (2, 8 * 49)
    gdc = GlobalDepthwiseConv(8, 7).eval()
    assert gdc(x).shape == (2, 8)
    assert sum(p.numel() for p in gdc.conv.parameters()) == 8 * 49  # one 7x7 kernel per channel
    for pool in (FlattenPool(7), gdc):
        with pytest.raises(ValueError, match="7x7 feature map"):
            pool(torch.randn(2, 8, 8, 8))
