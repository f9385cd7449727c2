"""Similarity estimation and 5-point alignment to the arcface template."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facezoo.data.align import ARCFACE_TEMPLATE, align_face, estimate_similarity, warp_affine


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, 6, 6, generator=g) * 255
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0]
    return big.clamp(0, 255).round().to(torch.uint8)


def test_template_values():
    assert ARCFACE_TEMPLATE.shape == (5, 2)
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963], rtol=0, atol=1e-4)
    np.testing.assert_allclose(ARCFACE_TEMPLATE[4], [70.7299, 92.2041], rtol=0, atol=1e-4)


def test_estimate_similarity_recovers_known_transform():
    m = _similarity(0.4, 1.7, 12.0, -5.0)
    src = ARCFACE_TEMPLATE.astype(np.float64)
    est = estimate_similarity(src, _apply(m, src))
    np.testing.assert_allclose(est, m, atol=1e-9)
    # least squares with noise: residual well below the noise-free spread
    rng = np.random.default_rng(0)
    noisy = _apply(m, src) + rng.normal(0, 0.5, src.shape)
    est = estimate_similarity(src, noisy)
    # least squares: no worse a fit than the true transform, and close to it
    assert np.square(_apply(est, src) - noisy).sum() <= np.square(_apply(m, src) - noisy).sum() + 1e-9
    np.testing.assert_allclose(est[:, :2], m[:, :2], atol=0.05)


def test_estimate_similarity_rejects_bad_points():
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="NaN"):
        estimate_similarity(np.full((5, 2), np.nan), ARCFACE_TEMPLATE)


def test_align_identity_is_exact():
    img = _smooth_image(112, 112)
    out = align_face(img, ARCFACE_TEMPLATE)
    assert out.dtype == torch.uint8 and out.shape == (3, 112, 112)
    assert torch.equal(out, img)


def test_align_undoes_a_similarity_warp():
    canonical = _smooth_image(112, 112, seed=1)
    m = _similarity(0.35, 1.6, 60.0, 20.0)  # canonical -> big image
    big = warp_affine(canonical, m, (260, 240))
    landmarks = _apply(m, ARCFACE_TEMPLATE.astype(np.float64))
    hwc = big.permute(1, 2, 0).numpy()
    for image in (hwc, Image.fromarray(hwc), big):
        out = align_face(image, landmarks)
        diff = (out[:, 8:-8, 8:-8].float() - canonical[:, 8:-8, 8:-8].float()).abs()
        assert diff.mean() < 2.0 and diff.max() < 25


def test_align_maps_landmarks_onto_template():
    # a bright dot at each landmark of a non-aligned image must land on the template points
    img = np.zeros((200, 200, 3), np.uint8)
    m = _similarity(-0.2, 1.3, 30.0, 10.0)
    pts = _apply(m, ARCFACE_TEMPLATE.astype(np.float64))
    for x, y in np.round(pts).astype(int):
        img[y - 2 : y + 3, x - 2 : x + 3] = 255
    out = align_face(img, pts).float().mean(0)
    for tx, ty in ARCFACE_TEMPLATE:
        x, y = int(round(tx)), int(round(ty))
        assert out[y - 1 : y + 2, x - 1 : x + 2].max() > 150


def test_align_other_size_and_bad_landmarks():
    img = _smooth_image(112, 112)
    assert align_face(img, ARCFACE_TEMPLATE * 2, size=224).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="5 landmarks"):
        align_face(img, np.zeros((4, 2)))
