"""facezoo.eval.roc against a literal transcription of sklearn's roc_curve and insightface's closest-FPR rule."""

from __future__ import annotations

import numpy as np
import pytest

from facezoo.eval import roc


def _ref_roc_curve(y_true, y_score, drop_intermediate=True):
    """sklearn.metrics.roc_curve (binary, no weights), transcribed."""
    y_true = y_true == 1
    desc = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[desc], y_true[desc]
    distinct = np.where(np.diff(y_score))[0]
    thr_idx = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true * 1.0, dtype=np.float64)[thr_idx]
    fps = 1 + thr_idx - tps
    thresholds = y_score[thr_idx]
    if drop_intermediate and len(fps) > 2:
        opt = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[opt], tps[opt], thresholds[opt]
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def _ref_tar(fpr, tpr, far):
    """insightface eval_ijbc.py: flipud, then Python min over (abs diff, index)."""
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, min_index = min(list(zip(abs(fpr - far), range(len(fpr)))))
    return tpr[min_index]


@pytest.mark.parametrize("seed,quantize", [(0, None), (1, 100), (2, 7), (3, 3)])
def test_roc_curve_equals_sklearn(seed, quantize):
    rng = np.random.default_rng(seed)
    n = 5000
    y = (rng.random(n) < 0.1).astype(int)
    s = rng.standard_normal(n) + 1.5 * y
    if quantize:  # many tied scores and evenly spaced collinear runs exercise drop_intermediate
        s = np.round(s * quantize) / quantize
    for drop in (True, False):
        ours = roc.roc_curve(y, s, drop_intermediate=drop)
        ref = _ref_roc_curve(y, s, drop_intermediate=drop)
        for a, b in zip(ours, ref):
            assert np.array_equal(a, b)
    assert len(roc.roc_curve(y, s)[0]) <= len(roc.roc_curve(y, s, drop_intermediate=False)[0])


def test_tar_at_far_equals_reference():
    rng = np.random.default_rng(4)
    y = (rng.random(40_000) < 0.02).astype(int)
    s = np.round(rng.standard_normal(y.size) + 3 * y, 3)
    fars = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    tars, curve = roc.tar_at_far(y, s, fars)
    for far in fars:
        assert tars[far] == _ref_tar(curve["fpr"], curve["tpr"], far)


def test_closest_fpr_ties_follow_reference():
    # equal FPR at three points: the reference (flipud + first min) takes the largest TPR
    fpr = np.array([0.0, 0.1, 0.1, 0.1, 0.5, 1.0])
    tpr = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    i = roc.closest_fpr_index(fpr, 0.1)
    assert tpr[i] == 0.6 == _ref_tar(fpr, tpr, 0.1)
    # two points equally far below / above the target: the reference takes the one above (later on the curve)
    fpr = np.array([0.0, 0.25, 0.75, 1.0])
    tpr = np.array([0.0, 0.5, 0.9, 1.0])
    assert tpr[roc.closest_fpr_index(fpr, 0.5)] == 0.9 == _ref_tar(fpr, tpr, 0.5)
    # and a plain argmin on the unflipped curve would differ: the tie case is what this test is about
    assert tpr[int(np.argmin(np.abs(fpr - 0.5)))] == 0.5


def test_roc_errors_and_auc():
    with pytest.raises(ValueError, match="both"):
        roc.roc_curve(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        roc.roc_curve(np.array([0, 1]), np.array([np.nan, 1.0]))
    fpr, tpr, _ = roc.roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert roc.auc(fpr, tpr) == 1.0
    fpr, tpr, _ = roc.roc_curve(np.array([1, 0, 1, 0]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert roc.auc(fpr, tpr) == pytest.approx(0.25)
