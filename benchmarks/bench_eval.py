"""Evaluation protocols: facezoo's vectorized code vs loops written the way insightface's tools do it.

Two workloads, each run side by side in this process, checked for equal results, timed, and reported as a ratio:

1. IJB-C-sized 1:1 on random features: 469,375 images (512-d float32, flip-fused, times faceness), 23,124
   templates, 15,658,489 template pairs. Synthetic pair structure: t1 from 3,531 "enrolment" templates, t2 from the
   other 19,593 (as IJB-C's mixed verification; the real list is not needed to time it). Rows: template
   aggregation (insightface ``image2template_feature``: per template, per media loops), pair scoring (its
   ``verification``: gather + dot in batches of 100k pairs), and TAR@FAR (sklearn's argsort ``roc_curve``
   transcribed, then insightface's flipud + ``min(zip(abs(fpr - far), range(len(fpr))))``).
2. 10-fold verification on 6,000 pairs (LFW-sized): insightface ``calculate_roc`` + ``calculate_val`` loops over
   400 + 4,000 thresholds per fold vs :func:`facezoo.eval.verification.evaluate`.

Usage: ``python benchmarks/bench_eval.py [--scale 1.0]`` (``--scale 0.05`` for a quick run).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from scipy import interpolate

from facezoo.eval import ijb, verification
from facezoo.eval.insightface_reference import (
    calculate_accuracy,
    calculate_val_far,
    image2template,
    verification_scores,
)
from facezoo.eval.roc import DEFAULT_FARS, tar_at_far


# --------------------------------------------------------------------------- references (insightface style)
def ref_tar_at_far(labels, scores, fars):
    y = labels == 1
    desc = np.argsort(scores, kind="mergesort")[::-1]
    s, y = scores[desc], y[desc]
    idx = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[idx]
    fps = 1 + idx - tps
    opt = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
    fps, tps = np.r_[0, fps[opt]], np.r_[0, tps[opt]]
    fpr, tpr = np.flipud(fps / fps[-1]), np.flipud(tps / tps[-1])
    out = {}
    for far in fars:
        _, min_index = min(list(zip(abs(fpr - far), range(len(fpr)))))
        out[far] = float(tpr[min_index])
    return out


def ref_verification_protocol(emb, issame, nfolds=10):
    e1, e2 = emb[0::2], emb[1::2]
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    n = len(issame)
    sizes = [n // nfolds + (1 if k < n % nfolds else 0) for k in range(nfolds)]
    bounds = np.cumsum([0] + sizes)
    folds = [(np.r_[0 : bounds[k], bounds[k + 1] : n], np.arange(bounds[k], bounds[k + 1])) for k in range(nfolds)]

    thr = np.arange(0, 4, 0.01)
    accuracy = np.zeros(nfolds)
    for k, (tr, te) in enumerate(folds):
        acc_train = np.array([calculate_accuracy(t, dist[tr], issame[tr])[2] for t in thr])
        b = np.argmax(acc_train)
        _ = [calculate_accuracy(t, dist[te], issame[te]) for t in thr]  # the ROC rows
        accuracy[k] = calculate_accuracy(thr[b], dist[te], issame[te])[2]
    thr = np.arange(0, 4, 0.001)
    val = np.zeros(nfolds)
    for k, (tr, te) in enumerate(folds):
        far_train = np.array([calculate_val_far(t, dist[tr], issame[tr])[1] for t in thr])
        th = interpolate.interp1d(far_train, thr, kind="linear")(1e-3) if far_train.max() >= 1e-3 else 0.0
        val[k] = calculate_val_far(th, dist[te], issame[te])[0]
    return accuracy, val


# --------------------------------------------------------------------------- workloads
def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def ijb_workload(scale: float, rng: np.random.Generator):
    n_img, n_t, n_enrol, n_pairs, dim = (
        int(469_375 * scale),
        int(23_124 * scale),
        int(3_531 * scale),
        int(15_658_489 * scale),
        512,
    )
    templates = np.concatenate([np.arange(n_t), rng.integers(0, n_t, n_img - n_t)])
    rng.shuffle(templates)
    medias = templates * 100 + rng.integers(0, 8, n_img)  # ~20 images/template, in up to 8 medias
    feats = rng.standard_normal((n_img, dim), dtype=np.float32)
    faceness = rng.uniform(0.3, 1.0, n_img).astype(np.float32)
    t1 = rng.integers(0, n_enrol, n_pairs)
    t2 = rng.integers(n_enrol, n_t, n_pairs)
    labels = (rng.random(n_pairs) < 19_557 / 15_658_489).astype(np.int64)
    img = ijb.image_features(feats, faceness=faceness)
    rows = []

    (tf, ut), t_ours = timed(ijb.image_to_template_features, img, templates, medias)
    (rtf, rut), t_ref = timed(image2template, img, templates, medias)
    err = float(np.abs(tf - rtf).max())
    rows.append(("IJB template aggregation", t_ref, t_ours, f"max |diff| {err:.1e}"))

    def ours_scores():
        return ijb.pair_scores(tf, ijb.template_rows(ut, t1), ijb.template_rows(ut, t2))

    s_ours, t_ours = timed(ours_scores)
    s_ref, t_ref = timed(verification_scores, rtf, rut, t1, t2)
    rows.append(("IJB pair scoring", t_ref, t_ours, f"max |diff| {np.abs(s_ours - s_ref).max():.1e}"))

    (tars, _), t_ours = timed(tar_at_far, labels, s_ours, DEFAULT_FARS)
    ref_tars, t_ref = timed(ref_tar_at_far, labels, s_ours, DEFAULT_FARS)
    same = all(tars[f] == ref_tars[f] for f in DEFAULT_FARS)
    rows.append(("IJB TAR@FAR (6 FARs)", t_ref, t_ours, "identical" if same else "DIFFERENT"))
    desc = f"{n_img:,} images, {n_t:,} templates, {n_pairs:,} pairs"
    return rows, desc


def verification_workload(rng: np.random.Generator):
    n = 6000
    issame = rng.random(n) < 0.5
    a = rng.standard_normal((n, 512))
    b = np.where(issame[:, None], a + 7.0 * rng.standard_normal((n, 512)), rng.standard_normal((n, 512)))
    emb = np.empty((2 * n, 512))
    emb[0::2], emb[1::2] = a, b
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    res, t_ours = timed(verification.evaluate, emb, issame)
    (acc, val), t_ref = timed(ref_verification_protocol, emb, issame)
    ok = res["fold_accuracies"] == acc.tolist() and abs(res["tar_at_far"] - float(np.mean(val))) < 1e-12
    return [
        (
            "Verification 10-fold, 6,000 pairs",
            t_ref,
            t_ours,
            ("identical" if ok else "DIFFERENT") + f" (acc {100 * res['accuracy']:.2f}%)",
        )
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the IJB-C sizes (default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}"
    )
    rows = verification_workload(rng)
    ijb_rows, desc = ijb_workload(args.scale, rng)
    rows += ijb_rows
    print(f"IJB workload: {desc}")
    print("| workload | reference loop (s) | facezoo (s) | speed-up | check |")
    print("|---|---:|---:|---:|---|")
    for name, t_ref, t_ours, check in rows:
        print(f"| {name} | {t_ref:.2f} | {t_ours:.2f} | {t_ref / t_ours:.1f}x | {check} |")


if __name__ == "__main__":
    main()
