"""1:1 verification protocol of the ``.bin`` sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

Reproduces insightface's ``eval/verification.py`` number for number, without sklearn and without its loops:

* ``embeddings`` rows ``2i`` and ``2i+1`` form pair ``i``; distance = squared L2 (float64).
* "same" is predicted when ``dist < threshold`` (strict); accuracy thresholds are ``np.arange(0, 4, 0.01)``.
* ``nfolds`` contiguous folds, no shuffle (sklearn ``KFold``: the first ``P % nfolds`` folds get one extra pair;
  ``nfolds=1`` trains and tests on all pairs, as insightface's ``LFold``).
* per fold, the first threshold with the best train accuracy is applied to the test fold; accuracy = mean of the
  fold accuracies, ``accuracy_std`` = their population std (``np.std``); the ROC is the mean over folds of the
  test-fold TPR/FPR at every threshold.
* TAR@FAR (insightface ``calculate_val``, thresholds ``np.arange(0, 4, 0.001)``): per fold, the train FAR curve
  is inverted at the target FAR by linear interpolation; if the target is never reached the threshold is 0.
  See :func:`threshold_at_far` for how repeated FAR values (which crash the reference's
  ``interp1d(kind='slinear')`` on current SciPy) are handled.

Counting is done with sorted distances and ``searchsorted`` (exact integer counts), so every number equals the
reference's per-threshold loop bit for bit.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from facezoo.errors import DataError
from facezoo.eval._arrays import ArrayLike, to_numpy

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)


def kfold_slices(n: int, nfolds: int = 10) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of ``nfolds`` contiguous folds over ``n`` items, as sklearn ``KFold``.

    The first ``n % nfolds`` folds hold ``n // nfolds + 1`` items, the rest ``n // nfolds``. ``nfolds == 1`` gives
    ``(all, all)`` (insightface's ``LFold``).
    """
    if nfolds < 1:
        raise ValueError(f"nfolds must be >= 1, got {nfolds}")
    idx = np.arange(n)
    if nfolds == 1:
        return [(idx, idx)]
    if n < nfolds:
        raise ValueError(f"cannot split {n} pairs into {nfolds} folds (need at least one pair per fold)")
    sizes = np.full(nfolds, n // nfolds, dtype=np.int64)
    sizes[: n % nfolds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [
        (np.concatenate([idx[: bounds[k]], idx[bounds[k + 1] :]]), idx[bounds[k] : bounds[k + 1]])
        for k in range(nfolds)
    ]


def pair_distances(embeddings: ArrayLike) -> np.ndarray:
    """Squared L2 distance of each pair (rows ``2i``, ``2i+1``), float64, as the reference computes it."""
    emb = to_numpy(embeddings, np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (2P, D), got shape {emb.shape}")
    if emb.shape[0] % 2:
        raise ValueError(f"embeddings must hold an even number of rows (pairs), got {emb.shape[0]}")
    diff = np.subtract(emb[0::2], emb[1::2])
    return np.sum(np.square(diff), 1)


def _counts_below(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Number of same / different pairs with ``dist < t`` for every threshold ``t`` (exact counts)."""
    same = np.sort(dist[issame])
    diff = np.sort(dist[~issame])
    return (np.searchsorted(same, thresholds, side="left"), np.searchsorted(diff, thresholds, side="left"))


def _fold_counts(
    dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray, folds: Sequence[Tuple[np.ndarray, np.ndarray]]
) -> Dict[str, np.ndarray]:
    """Confusion counts at every threshold, per fold, shape (F, T); class sizes shape (F,).

    Keys ``tp``, ``fp``, ``n_same``, ``n_diff`` for the test folds and the same with a ``train_`` prefix. Train
    counts are computed as total minus test (the folds partition the pairs), or equal the test counts for one fold.
    """
    tp, fp = map(np.asarray, zip(*(_counts_below(dist[t], issame[t], thresholds) for _, t in folds)))
    n_same = np.asarray([int(issame[t].sum()) for _, t in folds])
    n_diff = np.asarray([len(t) for _, t in folds]) - n_same
    if len(folds) == 1:
        train = (tp, fp, n_same, n_diff)
    else:
        train = (tp.sum(0) - tp, fp.sum(0) - fp, n_same.sum() - n_same, n_diff.sum() - n_diff)
    out = dict(tp=tp, fp=fp, n_same=n_same, n_diff=n_diff)
    out.update({f"train_{k}": v for k, v in zip(("tp", "fp", "n_same", "n_diff"), train)})
    return out


def _rates(
    tp: np.ndarray, fp: np.ndarray, n_same: np.ndarray, n_diff: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TPR, FPR, accuracy from counts; rates are 0 where a class is empty (as the reference)."""
    n_same = n_same[:, None].astype(np.float64)
    n_diff = n_diff[:, None].astype(np.float64)
    tn = n_diff - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.where(n_same > 0, tp / n_same, 0.0)
        fpr = np.where(n_diff > 0, fp / n_diff, 0.0)
    acc = (tp + tn) / (n_same + n_diff)
    return tpr, fpr, acc


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """Threshold at which the (non-decreasing) train FAR curve reaches ``far_target``: ``np.interp``.

    The reference uses ``scipy.interpolate.interp1d(far, thresholds, kind='slinear')``, which needs distinct FAR
    values: current SciPy raises "Expect x to not have duplicates", and a FAR curve nearly always repeats values
    (0 for all small thresholds). Rule used here: ``np.interp(far_target, far, thresholds)``, i.e. linear
    interpolation where, among grid thresholds with equal FAR, the last one counts (an exact hit returns the
    largest threshold whose train FAR equals the target; between two FAR values it interpolates between the last
    threshold below the target and the first one above). This equals the reference's ``slinear`` whenever the FAR
    values are distinct (the only case where it runs) and SciPy's ``interp1d(kind='linear')`` always. Returns 0.0
    when ``max(far) < far_target``, as the reference.
    """
    far = np.asarray(far, dtype=np.float64)
    if far.size == 0 or np.max(far) < far_target:
        return 0.0
    return float(np.interp(far_target, far, np.asarray(thresholds, dtype=np.float64)))


def evaluate(embeddings: ArrayLike, issame: ArrayLike, nfolds: int = 10, far_target: float = 1e-3) -> Dict[str, Any]:
    """Verification metrics of paired embeddings (insightface protocol, see module docstring).

    Args:
        embeddings: (2P, D) numpy array or torch tensor; rows 2i and 2i+1 form pair i. Pass what the reference
            passes: flip-fused, L2-normalized embeddings (:func:`facezoo.eval.extract.extract_embeddings` does it).
        issame: (P,) booleans, True for a genuine pair.
        nfolds: number of contiguous folds (10 in every published number).
        far_target: FAR of the TAR@FAR figure (1e-3 in the reference).

    Returns a dict: ``accuracy`` (mean of folds), ``accuracy_std``, ``fold_accuracies`` (list), ``thresholds``
    (best threshold of each fold), ``best_threshold`` (mean), ``tar_at_far`` / ``tar_at_far_std`` (TAR at
    ``far_target``, mean / std over folds), ``far`` (mean achieved test FAR), ``far_target``, ``roc``
    (``{'fpr', 'tpr', 'thresholds'}``, mean over folds), ``num_pairs``, ``nfolds``.
    """
    dist = pair_distances(embeddings)
    bad = int((~np.isfinite(dist)).sum())
    if bad:
        raise DataError(
            f"verification: {bad} of {dist.shape[0]} pairs have non-finite embeddings (NaN or Inf); "
            "refusing to score them (they would count as 'different' and give a meaningless accuracy)"
        )
    same = to_numpy(issame).astype(bool).reshape(-1)
    if same.shape[0] != dist.shape[0]:
        raise ValueError(f"{dist.shape[0]} pairs of embeddings but {same.shape[0]} issame labels")
    folds = kfold_slices(dist.shape[0], nfolds)

    # accuracy and ROC (calculate_roc)
    c = _fold_counts(dist, same, ACC_THRESHOLDS, folds)
    tpr, fpr, acc_test = _rates(c["tp"], c["fp"], c["n_same"], c["n_diff"])
    _, _, acc_train = _rates(c["train_tp"], c["train_fp"], c["train_n_same"], c["train_n_diff"])
    best = np.argmax(acc_train, axis=1)  # first maximum, as the reference
    fold_acc = acc_test[np.arange(len(folds)), best]

    # TAR at FAR (calculate_val)
    v = _fold_counts(dist, same, VAL_THRESHOLDS, folds)
    _, far_train, _ = _rates(v["train_tp"], v["train_fp"], v["train_n_same"], v["train_n_diff"])
    vals, fars = [], []
    for k, (_, test) in enumerate(folds):
        th = threshold_at_far(far_train[k], VAL_THRESHOLDS, far_target)
        d, s = dist[test], same[test]
        pred = np.less(d, th)
        n_same, n_diff = int(s.sum()), int((~s).sum())
        # the reference divides by the class sizes unguarded; a fold without one class yields nan there
        vals.append(float(np.sum(pred & s)) / n_same if n_same else float("nan"))
        fars.append(float(np.sum(pred & ~s)) / n_diff if n_diff else float("nan"))

    return {
        "accuracy": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "fold_accuracies": fold_acc.tolist(),
        "thresholds": ACC_THRESHOLDS[best].tolist(),
        "best_threshold": float(np.mean(ACC_THRESHOLDS[best])),
        "tar_at_far": float(np.mean(vals)),
        "tar_at_far_std": float(np.std(vals)),
        "far": float(np.mean(fars)),
        "far_target": float(far_target),
        "roc": {
            "fpr": np.mean(fpr, 0).tolist(),
            "tpr": np.mean(tpr, 0).tolist(),
            "thresholds": ACC_THRESHOLDS.tolist(),
        },
        "num_pairs": int(dist.shape[0]),
        "nfolds": int(nfolds),
    }
