"""ROC curve and TAR@FAR exactly as the IJB reference tools compute them (sklearn ``roc_curve`` + closest FPR).

:func:`roc_curve` reproduces ``sklearn.metrics.roc_curve(labels, scores)`` with its default
``drop_intermediate=True`` point for point (same float64 arithmetic), so that the closest-FPR rule below selects
the same ROC point as insightface's ``eval_ijbc.py``.
"""

from __future__ import annotations

from typing import Dict, Iterable, Tuple

import numpy as np

from facezoo.eval._arrays import ArrayLike, to_numpy

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def roc_curve(
    labels: ArrayLike, scores: ArrayLike, drop_intermediate: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of a binary score, identical to sklearn's ``roc_curve``.

    One ROC point per distinct score, in descending score order; with ``drop_intermediate`` a point is
    dropped when both the false- and true-positive counts have zero second difference there (sklearn's rule, so
    evenly spaced collinear points go); a (0, 0) point with threshold ``inf`` is prepended. Positive = label 1
    (or True). Raises if either class is absent (sklearn returns NaN rates with a warning there).
    """
    y = to_numpy(labels).reshape(-1) == 1
    s = to_numpy(scores).reshape(-1)
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    if not y.any() or y.all():
        raise ValueError("roc_curve needs both positive (label 1) and negative pairs")
    if np.isnan(s).any():
        raise ValueError(f"{int(np.isnan(s).sum())} scores are NaN")
    # One ROC point per distinct score, in descending order. Work with the per-threshold increments (group sizes
    # and positives per group) rather than sklearn's permuted labels and cumulative sums: the same integers, from one
    # ascending sort, one comparison pass and a search of the (few) positive scores.
    s_asc = np.sort(s)
    is_last = np.empty(s_asc.size, dtype=bool)
    np.not_equal(s_asc[1:], s_asc[:-1], out=is_last[:-1])
    is_last[-1] = True
    last = np.flatnonzero(is_last)  # ascending index of each distinct value's last occurrence
    start = np.empty_like(last)
    start[0] = 0
    start[1:] = last[:-1] + 1
    thresholds = s_asc[last[::-1]]  # descending
    count_ge = s_asc.size - start[::-1]  # pairs scoring >= each threshold
    tp_inc = np.bincount(thresholds.size - 1 - np.searchsorted(thresholds[::-1], s[y]), minlength=thresholds.size)
    tps = np.cumsum(tp_inc)
    fps = count_ge - tps
    if drop_intermediate and thresholds.size > 2:
        # sklearn keeps a point when the second difference of fps or tps there is non-zero, i.e. when the
        # increment changes between this group and the next
        fp_inc = (last - start + 1)[::-1] - tp_inc
        inner = (fp_inc[2:] != fp_inc[1:-1]) | (tp_inc[2:] != tp_inc[1:-1])
        keep = np.flatnonzero(np.r_[True, inner, True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = fps.astype(np.float64)
    tps = tps.astype(np.float64)
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def closest_fpr_index(fpr: np.ndarray, far: float) -> int:
    """Index of the ROC point whose FPR is closest to ``far``; ties go to the LAST such point.

    insightface flips the curve (``np.flipud``, "select largest tpr at same fpr") and takes the first minimum of
    ``abs(fpr - far)``; on the unflipped curve that is the last minimum: among equal FPRs the largest TPR, and
    between two points equally far below/above the target, the one above.
    """
    flipped = np.abs(np.asarray(fpr)[::-1] - far)
    return len(fpr) - 1 - int(np.argmin(flipped))


def tar_at_far(
    labels: ArrayLike, scores: ArrayLike, fars: Iterable[float] = DEFAULT_FARS
) -> Tuple[Dict[float, float], Dict[str, np.ndarray]]:
    """TAR at each FAR by the closest-FPR rule, and the ROC ``{'fpr', 'tpr', 'thresholds'}`` it was read from.

    TAR values are fractions in [0, 1]; the ROC arrays are float64.
    """
    fpr, tpr, thr = roc_curve(labels, scores)
    out = {}
    for far in fars:
        out[float(far)] = float(tpr[closest_fpr_index(fpr, float(far))])
    return out, {"fpr": fpr, "tpr": tpr, "thresholds": thr}


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule (x monotonic), as ``sklearn.metrics.auc``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return -area if np.all(np.diff(x) <= 0) and area < 0 else area
