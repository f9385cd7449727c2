"""insightface's evaluation loops, transcribed literally (``recognition/arcface_torch/eval_ijbc.py`` and
``eval/verification.py``), numpy only.

facezoo's vectorized protocols (:mod:`facezoo.eval.ijb`, :mod:`facezoo.eval.verification`) are tested against these
to the digit and benchmarked against them (``benchmarks/bench_eval.py``). They are slow on purpose: not for use.
"""

from __future__ import annotations

import numpy as np

__all__ = ["image2template", "verification_scores", "calculate_accuracy", "calculate_val_far"]


def image2template(img_feats, templates, medias):
    """``eval_ijbc.image2template_feature``: media-average, template-sum, L2-normalize."""
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for c, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        template_feats[c] = np.sum(np.array(media_norm_feats), axis=0)
    norms = np.sqrt(np.sum(template_feats**2, -1, keepdims=True))
    return template_feats / norms, unique_templates


def verification_scores(template_norm_feats, unique_templates, p1, p2, chunk: int = 100000):
    """``eval_ijbc.verification``: cosine score of each template pair, in chunks of ``chunk`` pairs."""
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for c, uqt in enumerate(unique_templates):
        template2id[uqt] = c
    score = np.zeros((len(p1),))
    total = np.array(range(len(p1)))
    for s in [total[i : i + chunk] for i in range(0, len(p1), chunk)]:
        f1 = template_norm_feats[template2id[p1[s]]]
        f2 = template_norm_feats[template2id[p2[s]]]
        score[s] = np.sum(f1 * f2, -1).flatten()
    return score


def calculate_accuracy(threshold, dist, actual_issame):
    """``verification.calculate_accuracy``: (tpr, fpr, accuracy) of ``dist < threshold``."""
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def calculate_val_far(threshold, dist, actual_issame):
    """``verification.calculate_val_far``: (validation rate, false accept rate) of ``dist < threshold``."""
    predict_issame = np.less(dist, threshold)
    ta = np.sum(np.logical_and(predict_issame, actual_issame))
    fa = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    return float(ta) / float(np.sum(actual_issame)), float(fa) / float(np.sum(np.logical_not(actual_issame)))
