"""Five-point face alignment to the 112x112 arcface template (similarity transform), without OpenCV.

``estimate_similarity`` is Umeyama's least-squares similarity (as ``skimage.transform.SimilarityTransform``, which
insightface uses); ``align_face`` warps with bilinear sampling and zero border, sampling pixel centres the way
``cv2.warpAffine`` does, so crops match insightface's ``norm_crop`` up to interpolation rounding.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facezoo.data.image import to_uint8_chw

__all__ = ["ARCFACE_TEMPLATE", "estimate_similarity", "align_face", "warp_affine"]

#: Landmarks (left eye, right eye, nose tip, left and right mouth corner) of an aligned 112x112 arcface crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``.

    Umeyama (1991), with reflection correction. Returns a 2x3 float64 matrix ``M`` with ``dst ~ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) point arrays with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or infinite values")
    n = src.shape[0]
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        raise ValueError("degenerate landmarks: all points coincide")
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        r = u @ vt
    elif rank == 1:
        r = u @ np.diag([1.0, -1.0]) @ vt
    else:
        r = u @ np.diag(d) @ vt
    var = src_c.var(0).sum()
    scale = (s * d).sum() / var
    t = dst_mean - scale * r @ src_mean
    return np.concatenate([scale * r, t[:, None]], axis=1)


def warp_affine(image: torch.Tensor, matrix: np.ndarray, size: Union[int, tuple[int, int]]) -> torch.Tensor:
    """Warp a uint8 (3, H, W) tensor with a 2x3 forward matrix (input -> output pixel coordinates, pixel centres
    at integers as in OpenCV), bilinear, zero outside. Returns uint8 (3, h, w)."""
    h, w = (size, size) if isinstance(size, int) else size
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    in_h, in_w = image.shape[-2:]
    # grid_sample with align_corners=False: normalized -1/+1 are the outer pixel edges.
    grid = np.stack([(src_x + 0.5) / in_w * 2 - 1, (src_y + 0.5) / in_h * 2 - 1], axis=-1)
    out = F.grid_sample(
        image[None].float(),
        torch.from_numpy(grid).float()[None],
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out[0].round().clamp_(0, 255).to(torch.uint8)


def align_face(
    image: Union[np.ndarray, Image.Image, torch.Tensor], landmarks: np.ndarray, size: int = 112
) -> torch.Tensor:
    """Align a face with its 5 landmarks (x, y in input pixels) to the arcface template; uint8 RGB (3, size, size).

    ``image``: uint8 HWC numpy array, PIL image, or uint8 (3, H, W) tensor. For sizes other than 112 the template
    is scaled by ``size / 112``, as insightface's ``estimate_norm`` does.
    """
    lmk = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if lmk.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks (10 numbers), got shape {np.asarray(landmarks).shape}")
    template = ARCFACE_TEMPLATE.astype(np.float64) * (size / 112.0)
    matrix = estimate_similarity(lmk, template)
    return warp_affine(to_uint8_chw(image), matrix, size)
