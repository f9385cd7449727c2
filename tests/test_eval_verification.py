"""facezoo.eval.verification against a literal transcription of insightface's per-threshold loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import interpolate

from facezoo.eval import verification as V
from facezoo.eval.insightface_reference import calculate_accuracy, calculate_val_far


# ------------------------------------------------------------------ reference (insightface eval/verification.py)
def _ref_folds(n, nfolds):
    if nfolds == 1:
        idx = np.arange(n)
        return [(idx, idx)]
    sizes = [n // nfolds + (1 if k < n % nfolds else 0) for k in range(nfolds)]
    out, start = [], 0
    for s in sizes:
        test = np.arange(start, start + s)
        out.append((np.setdiff1d(np.arange(n), test), test))
        start += s
    return out


def _ref_evaluate(embeddings, issame, nfolds=10, kind="linear"):
    e1, e2 = embeddings[0::2], embeddings[1::2]
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    folds = _ref_folds(len(issame), nfolds)
    thresholds = np.arange(0, 4, 0.01)
    tprs = np.zeros((nfolds, len(thresholds)))
    fprs = np.zeros((nfolds, len(thresholds)))
    acc = np.zeros(nfolds)
    best = []
    for k, (train, test) in enumerate(folds):
        acc_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            _, _, acc_train[i] = calculate_accuracy(t, dist[train], issame[train])
        b = np.argmax(acc_train)
        best.append(thresholds[b])
        for i, t in enumerate(thresholds):
            tprs[k, i], fprs[k, i], _ = calculate_accuracy(t, dist[test], issame[test])
        _, _, acc[k] = calculate_accuracy(thresholds[b], dist[test], issame[test])
    thresholds = np.arange(0, 4, 0.001)
    val = np.zeros(nfolds)
    for k, (train, test) in enumerate(folds):
        far_train = np.array([calculate_val_far(t, dist[train], issame[train])[1] for t in thresholds])
        if np.max(far_train) >= 1e-3:
            th = interpolate.interp1d(far_train, thresholds, kind=kind)(1e-3)
        else:
            th = 0.0
        val[k], _ = calculate_val_far(th, dist[test], issame[test])
    return dict(acc=acc, best=np.array(best), tpr=tprs.mean(0), fpr=fprs.mean(0), val=val)


def _pairs(rng, n_pairs, dim=16, noise=0.9):
    issame = rng.random(n_pairs) < 0.5
    a = rng.standard_normal((n_pairs, dim))
    b = np.where(issame[:, None], a + noise * rng.standard_normal((n_pairs, dim)), rng.standard_normal((n_pairs, dim)))
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = a, b
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), issame


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("n,nfolds", [(600, 10), (23, 10), (7, 1), (31, 3)])
def test_fold_boundaries_match_sklearn_kfold(n, nfolds):
    ours = V.kfold_slices(n, nfolds)
    ref = _ref_folds(n, nfolds)
    assert len(ours) == len(ref)
    for (tr, te), (rtr, rte) in zip(ours, ref):
        assert np.array_equal(te, rte) and np.array_equal(tr, rtr)
    if nfolds > 1:
        sizes = [len(te) for _, te in ours]
        assert sizes == sorted(sizes, reverse=True) and sum(sizes) == n and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n_pairs,nfolds,seed", [(600, 10, 0), (457, 10, 1), (120, 1, 2)])
def test_evaluate_equals_reference_loops(n_pairs, nfolds, seed):
    emb, issame = _pairs(np.random.default_rng(seed), n_pairs)
    ours = V.evaluate(emb, issame, nfolds=nfolds)
    ref = _ref_evaluate(emb, issame, nfolds)
    assert ours["fold_accuracies"] == ref["acc"].tolist()  # bit-exact
    assert ours["accuracy"] == float(np.mean(ref["acc"]))
    assert ours["accuracy_std"] == float(np.std(ref["acc"]))
    assert ours["thresholds"] == ref["best"].tolist()
    assert np.array_equal(ours["roc"]["tpr"], ref["tpr"]) and np.array_equal(ours["roc"]["fpr"], ref["fpr"])
    assert ours["tar_at_far"] == pytest.approx(float(np.mean(ref["val"])), abs=1e-12)
    assert ours["tar_at_far_std"] == pytest.approx(float(np.std(ref["val"])), abs=1e-12)
    assert 0.5 < ours["accuracy"] < 1.0  # a non-trivial problem


def test_first_best_threshold_and_strict_less():
    # every distance sits exactly on a grid threshold: strict '<' must not accept it
    issame = np.array([True, True, False, False] * 5)
    d = np.where(issame, 0.5, 1.5)
    emb = np.zeros((2 * len(d), 2))
    emb[1::2, 0] = np.sqrt(d)
    r = V.evaluate(emb, issame, nfolds=2)
    # best train accuracy (1.0) is first reached just above 0.5 (0.51), never at 0.50
    assert r["thresholds"] == [0.51, 0.51]
    assert r["fold_accuracies"] == [1.0, 1.0]


def test_threshold_at_far_matches_scipy():
    thr = np.arange(0, 1, 0.1)
    distinct = np.array([0.0, 0.0005, 0.0008, 0.002, 0.01, 0.1, 0.2, 0.5, 0.9, 1.0])
    assert V.threshold_at_far(distinct, thr, 1e-3) == pytest.approx(
        float(interpolate.interp1d(distinct, thr, kind="slinear")(1e-3))
    )
    repeated = np.array([0.0, 0.0, 0.0, 0.0005, 0.0005, 0.004, 0.004, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError):  # what the reference does on current SciPy
        interpolate.interp1d(repeated, thr, kind="slinear")
    for target in (1e-3, 5e-4, 4e-3, 0.3):
        assert V.threshold_at_far(repeated, thr, target) == pytest.approx(
            float(interpolate.interp1d(repeated, thr, kind="linear")(target))
        )
    assert V.threshold_at_far(repeated, thr, 5e-4) == pytest.approx(0.4)  # exact hit: last threshold with that FAR
    assert V.threshold_at_far(repeated, thr, 1e-3) == pytest.approx(0.4 + 0.1 * (1e-3 - 5e-4) / (4e-3 - 5e-4))
    assert V.threshold_at_far(np.zeros(10), thr, 1e-3) == 0.0  # never reached -> 0 as the reference


def test_torch_input_and_bad_shapes():
    emb, issame = _pairs(np.random.default_rng(5), 100)
    a = V.evaluate(emb, issame)
    b = V.evaluate(torch.from_numpy(emb), torch.from_numpy(issame))
    assert a["fold_accuracies"] == b["fold_accuracies"]
    with pytest.raises(ValueError, match="even number"):
        V.evaluate(emb[:-1], issame)
    with pytest.raises(ValueError, match="issame"):
        V.evaluate(emb, issame[:-1])
    with pytest.raises(ValueError, match="2-D"):
        V.evaluate(emb[:, :, None], issame)
