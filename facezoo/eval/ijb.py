"""IJB-B / IJB-C 1:1 template verification, as insightface's ``eval_ijbc.py`` (vectorized).

Default mode = the reference defaults (``use_flip_test``, ``use_norm_score``, ``use_detector_score`` all True):

1. per image feature ``f(img) + f(flip(img))``, NOT L2-normalized, times the detector's faceness score;
2. per template: mean over the images of each media (a single image is taken as is), sum over the medias;
3. L2-normalize the template features; score of a pair = dot product of its two templates' features;
4. TAR at each FAR from the ROC (sklearn ``roc_curve`` semantics) at the point whose FPR is closest to the target
   (see :func:`facezoo.eval.roc.closest_fpr_index`).

Other modes: ``flip_features=None`` (no flip test), ``normalize_images=True`` (per-image L2 before the faceness
weighting, the reference's ``use_norm_score=False``), ``faceness=None`` (no detector score).

Template aggregation is one sparse matrix product (media mean then template sum = sum of ``f_i / |media(i)|``)
and pair scoring uses dense matrix products over the templates that occur in the pair list, so IJB-C
(469k images, 23k templates, 15.7M pairs) runs in seconds. Sums are accumulated in the features' precision
(float32, as the reference's float32 media means and their float32 ``np.sum``), then L2-normalized in float64;
scores are float64.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np
import torch

from facezoo.errors import DataError
from facezoo.eval._arrays import ArrayLike, to_numpy
from facezoo.eval.roc import DEFAULT_FARS, auc, tar_at_far


def image_features(
    features: ArrayLike,
    flip_features: Optional[ArrayLike] = None,
    faceness: Optional[ArrayLike] = None,
    normalize_images: bool = False,
) -> np.ndarray:
    """Per-image features entering template aggregation (steps 1 of the module docstring), float32 like the reference.

    Args:
        features: (N, D) features of the images (or already flip-fused ``f(img) + f(flip)`` features).
        flip_features: (N, D) features of the flipped images, added to ``features`` when given.
        faceness: (N,) detector scores multiplied in when given.
        normalize_images: L2-normalize each image feature (after the flip sum, before the faceness weighting).
    """
    f = to_numpy(features, np.float32)
    if f.ndim != 2:
        raise ValueError(f"image features must be 2-D (N, D), got shape {f.shape}")
    if flip_features is not None:
        ff = to_numpy(flip_features, np.float32)
        if ff.shape != f.shape:
            raise ValueError(f"flip_features shape {ff.shape} differs from features shape {f.shape}")
        f = f + ff
    bad = int((~np.isfinite(f)).any(axis=1).sum())
    if bad:
        raise DataError(f"IJB: {bad} of {f.shape[0]} image features are not finite (NaN or Inf); refusing to score")
    if normalize_images:
        f = f / np.sqrt(np.sum(f**2, -1, keepdims=True))
    if faceness is not None:
        s = to_numpy(faceness, np.float32).reshape(-1)
        if s.shape[0] != f.shape[0]:
            raise ValueError(f"{s.shape[0]} faceness scores for {f.shape[0]} image features")
        f = f * s[:, None]
    return f


def split_concat_features(features: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Split insightface-style ``[f(img), f(flip)]`` features (N, 2D) into the two (N, D) halves."""
    f = to_numpy(features)
    if f.ndim != 2 or f.shape[1] % 2:
        raise ValueError(f"concatenated features must be (N, 2D), got shape {f.shape}")
    d = f.shape[1] // 2
    return f[:, :d], f[:, d:]


def image_to_template_features(
    features: ArrayLike, templates: ArrayLike, medias: ArrayLike, normalize: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
    """Template features: per template, mean over each media's images, summed over medias, then L2 (float64).

    Returns ``(template_features (T, D), unique_templates (T,))`` with templates in ascending id order, as the
    reference's ``image2template_feature``.
    """
    f = to_numpy(features)
    t = to_numpy(templates).reshape(-1)
    m = to_numpy(medias).reshape(-1)
    if f.ndim != 2:
        raise ValueError(f"image features must be 2-D (N, D), got shape {f.shape}")
    if not (f.shape[0] == t.shape[0] == m.shape[0]):
        raise ValueError(f"{f.shape[0]} image features, {t.shape[0]} template ids, {m.shape[0]} media ids")
    unique_templates, t_inv = np.unique(t, return_inverse=True)
    _, m_inv = np.unique(m, return_inverse=True)
    key = t_inv.astype(np.int64) * (int(m_inv.max(initial=0)) + 1) + m_inv
    _, g_inv, g_counts = np.unique(key, return_inverse=True, return_counts=True)
    src = f if f.dtype in (np.float32, np.float64) else f.astype(np.float32)
    weights = (1.0 / g_counts[g_inv]).astype(src.dtype)
    # (T, N) aggregation matrix, one row per template holding 1/|media| for each of its images: one sparse GEMM
    order = np.argsort(t_inv, kind="stable")
    crow = np.zeros(len(unique_templates) + 1, dtype=np.int64)
    np.cumsum(np.bincount(t_inv, minlength=len(unique_templates)), out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        aggregate = torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(order.astype(np.int64)),
            torch.from_numpy(weights[order]),
            size=(len(unique_templates), f.shape[0]),
            check_invariants=False,
        )
        out = (aggregate @ torch.from_numpy(np.ascontiguousarray(src))).double()
    if normalize:
        out = out / out.norm(dim=1, keepdim=True)
    return out.numpy(), unique_templates


def template_rows(unique_templates: np.ndarray, ids: ArrayLike, what: str = "pair list") -> np.ndarray:
    """Row of each template id in ``unique_templates`` (sorted ascending); a clear error names the first unknown id.

    Uses a lookup table (as the reference's ``template2id``) when the ids are small non-negative integers,
    binary search otherwise.
    """
    ids = to_numpy(ids).reshape(-1)
    if len(unique_templates) == 0:
        raise ValueError(f"no templates with images, but the {what} names {len(ids)} entries")
    if (
        np.issubdtype(unique_templates.dtype, np.integer)
        and np.issubdtype(ids.dtype, np.integer)
        and unique_templates[0] >= 0
        and unique_templates[-1] < 16 * len(unique_templates) + 1024
    ):
        lut = np.full(int(unique_templates[-1]) + 1, -1, dtype=np.int64)
        lut[unique_templates] = np.arange(len(unique_templates))
        inside = (ids >= 0) & (ids <= unique_templates[-1])
        rows = np.full(ids.shape, -1, dtype=np.int64)
        rows[inside] = lut[ids[inside]]
        bad = np.nonzero(rows < 0)[0]
    else:
        rows = np.minimum(np.searchsorted(unique_templates, ids), len(unique_templates) - 1)
        bad = np.nonzero(unique_templates[rows] != ids)[0]
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"template {ids[i]} (entry {i}, line {i + 1} of the {what}) has no images; "
            f"{len(bad)} of {len(ids)} entries name templates without images"
        )
    return rows


def _compact(rows: np.ndarray, n_rows: int) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted unique rows, index of each entry in them), in O(n) with a presence table instead of a sort."""
    present = np.zeros(n_rows, dtype=bool)
    present[rows] = True
    unique = np.flatnonzero(present)
    position = np.cumsum(present) - 1
    return unique, position[rows]


def pair_scores(
    template_features: ArrayLike, rows1: ArrayLike, rows2: ArrayLike, max_block_bytes: int = 1 << 30
) -> np.ndarray:
    """Dot product of template rows ``rows1[i]`` and ``rows2[i]`` for every pair (float64).

    When the pairs are dense over the templates they use (IJB-C: ~3.5k enrolment templates against ~19.6k
    others, 23% of all combinations), scores come from matrix products ``F[u1] @ F[u2].T`` (BLAS; in blocks of at
    most ``max_block_bytes``) that compute up to 64x more dot products than needed but never gather a feature row
    per pair; sparse pair lists use a chunked gather + row-wise dot (chunks of ``max_block_bytes / 2``). Both equal
    the reference's row-wise dot to float64 rounding.
    """
    feats = torch.from_numpy(np.ascontiguousarray(to_numpy(template_features, np.float64)))
    r1 = to_numpy(rows1).astype(np.int64, copy=False).reshape(-1)
    r2 = to_numpy(rows2).astype(np.int64, copy=False).reshape(-1)
    n, n_t = r1.shape[0], feats.shape[0]
    scores = np.empty(n, dtype=np.float64)
    if n == 0:
        return scores
    u1, i1 = _compact(r1, n_t)
    u2, i2 = _compact(r2, n_t)
    if len(u1) > len(u2):  # block over the smaller side
        u1, i1, u2, i2 = u2, i2, u1, i1
    if len(u1) * len(u2) <= 64 * n:
        f2t = feats[torch.from_numpy(u2)].T.contiguous()
        block = max(1, int(max_block_bytes // (8 * len(u2))))
        if block >= len(u1):  # one product holds every needed score
            s = (feats[torch.from_numpy(u1)] @ f2t).numpy().ravel()
            return np.take(s, i1 * len(u2) + i2)
        order = np.argsort(i1.astype(np.uint16) if len(u1) <= 1 << 16 else i1, kind="stable")  # radix sort
        i1s = i1[order]
        starts = np.searchsorted(i1s, np.r_[np.arange(0, len(u1), block), len(u1)])
        for b, (p0, p1) in enumerate(zip(starts[:-1], starts[1:])):
            if p0 == p1:
                continue
            a = b * block
            s = (feats[torch.from_numpy(u1[a : a + block])] @ f2t).numpy().ravel()
            sel = order[p0:p1]
            scores[sel] = np.take(s, (i1s[p0:p1] - a) * len(u2) + i2[sel])
        return scores
    step = max(1, min(1 << 15, int(max_block_bytes // (16 * feats.shape[1]))))
    b1 = torch.empty(min(step, n), feats.shape[1], dtype=torch.float64)
    b2 = torch.empty_like(b1)
    t1, t2 = torch.from_numpy(r1), torch.from_numpy(r2)
    for a in range(0, n, step):
        k = min(step, n - a)
        torch.index_select(feats, 0, t1[a : a + k], out=b1[:k])
        torch.index_select(feats, 0, t2[a : a + k], out=b2[:k])
        scores[a : a + k] = torch.linalg.vecdot(b1[:k], b2[:k]).numpy()
    return scores


def evaluate(
    features: ArrayLike,
    templates: ArrayLike,
    medias: ArrayLike,
    t1: ArrayLike,
    t2: ArrayLike,
    labels: ArrayLike,
    faceness: Optional[ArrayLike] = None,
    fars: Iterable[float] = DEFAULT_FARS,
    flip_features: Optional[ArrayLike] = None,
    normalize_images: bool = False,
    return_roc: bool = True,
) -> Dict[str, Any]:
    """IJB 1:1 verification (module docstring). Inputs are per image (N rows) and per pair (P rows).

    Args:
        features: (N, D) image features; flip-fused ``f(img) + f(flip)`` for the reference default, or the plain
            ``f(img)`` with ``flip_features`` given (or alone, for the no-flip mode).
        templates, medias: (N,) template id and media id of each image.
        t1, t2, labels: (P,) template pairs and their 0/1 labels (1 = same subject).
        faceness: (N,) detector scores to weight images by; None = no detector score.
        fars: target FARs of the TAR@FAR figures.
        flip_features: (N, D) features of the flipped images, added to ``features``.
        normalize_images: L2-normalize each image feature first (reference ``use_norm_score=False``).
        return_roc: include the ROC arrays (``roc``: fpr, tpr, thresholds, numpy) in the result.

    Returns ``{'scores': (P,) float64 in pair order, 'tar_at_far': {far: tar}, 'auc', 'num_pairs',
    'num_templates', 'num_images', 'roc'}``.
    """
    img = image_features(features, flip_features, faceness, normalize_images)
    tfeat, unique_t = image_to_template_features(img, templates, medias)
    p1 = to_numpy(t1).reshape(-1)
    p2 = to_numpy(t2).reshape(-1)
    lab = to_numpy(labels).reshape(-1)
    if not (p1.shape == p2.shape == lab.shape):
        raise ValueError(f"t1, t2, labels lengths differ: {p1.shape[0]}, {p2.shape[0]}, {lab.shape[0]}")
    scores = pair_scores(tfeat, template_rows(unique_t, p1), template_rows(unique_t, p2))
    tars, roc = tar_at_far(lab, scores, fars)
    out: Dict[str, Any] = {
        "scores": scores,
        "tar_at_far": tars,
        "auc": auc(roc["fpr"], roc["tpr"]),
        "num_pairs": int(p1.shape[0]),
        "num_templates": int(len(unique_t)),
        "num_images": int(img.shape[0]),
    }
    if return_roc:
        out["roc"] = roc
    return out
