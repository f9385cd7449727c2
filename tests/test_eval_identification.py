"""1:N identification: insightface's ijb_1n.py (transcribed loops) and the NIST open-set protocol."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest

from facezoo.eval import identification as I


def _ref_mixed(query_feats, gallery_feats, mask, fars=(0.01, 0.1)):
    """insightface recognition/_evaluation_/ijb/ijb_1n.py ``evaluation`` (prints turned into returns)."""
    query_num = query_feats.shape[0]
    similarity = np.dot(query_feats, gallery_feats.T)
    top_inds = np.argsort(-similarity)
    out = {}
    for k in (1, 5, 10):
        out[k] = sum(mask[i] in top_inds[i, 0:k] for i in range(query_num)) / query_num
    required_topk = [math.ceil(query_num * x) for x in fars]
    top_sims = similarity.copy()
    pos_sims = []
    for i in range(query_num):
        gt = mask[i]
        pos_sims.append(top_sims[i, gt])
        top_sims[i, gt] = -2.0
    pos_sims = np.array(pos_sims)
    neg_sims = top_sims[np.where(top_sims > -2.0)]
    neg_sims = heapq.nlargest(max(required_topk), neg_sims)
    tpir = {}
    for far, pos in zip(fars, required_topk):
        th = neg_sims[pos - 1]
        tpir[far] = np.sum(pos_sims > th) / query_num
    return out, tpir


def _data(rng, n_subjects=40, n_probes=300, dim=16, noise=0.9):
    centers = rng.standard_normal((n_subjects, dim))
    gallery = centers + 0.3 * rng.standard_normal(centers.shape)
    probe_ids = rng.integers(0, n_subjects, n_probes)
    probes = centers[probe_ids] + noise * rng.standard_normal((n_probes, dim))
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return norm(probes), probe_ids + 100, norm(gallery), np.arange(n_subjects) + 100


def test_mixed_equals_insightface():
    rng = np.random.default_rng(0)
    probes, pid, gallery, gid = _data(rng)
    perm = rng.permutation(len(gid))  # gallery order must not matter
    gallery, gid = gallery[perm], gid[perm]
    scores = I.similarity(probes, gallery)
    res = I.evaluate_mixed(scores, pid, gid)
    mask = I.mate_index(pid, gid)
    ref_cmc, ref_tpir = _ref_mixed(probes, gallery, mask)
    assert res["cmc"] == pytest.approx(ref_cmc, abs=0)
    assert res["tpir_at_fpir"] == pytest.approx(ref_tpir, abs=0)
    assert 0.2 < res["cmc"][1] < 1.0 and res["cmc"][1] <= res["cmc"][5] <= res["cmc"][10]


def test_open_set_against_loop():
    rng = np.random.default_rng(1)
    probes, pid, gallery, gid = _data(rng, n_probes=400)
    keep = gid < 125  # subjects 125.. are absent from the gallery: their probes are non-mated
    scores = I.similarity(probes, gallery[keep])
    res = I.evaluate_open_set(scores, pid, gid[keep], fpirs=(0.05, 0.2, 1.0))
    g = list(gid[keep])
    mated = [i for i in range(len(pid)) if pid[i] in g]
    nonmated = [i for i in range(len(pid)) if pid[i] not in g]
    assert res["num_mated"] == len(mated) and res["num_nonmated"] == len(nonmated)
    rank1 = [int(np.argmax(scores[i]) == g.index(pid[i])) for i in mated]
    assert res["cmc"][1] == pytest.approx(np.mean(rank1))
    for f, th in res["thresholds"].items():
        fpir = np.mean([scores[i].max() > th for i in nonmated])
        assert fpir <= f
        tpir = np.mean([rank1[j] and scores[i, g.index(pid[i])] > th for j, i in enumerate(mated)])
        assert res["tpir_at_fpir"][f] == pytest.approx(tpir)
    assert res["tpir_at_fpir"][1.0] == res["cmc"][1]  # no threshold at FPIR 1


def test_ranks_vectorized():
    scores = np.array([[0.9, 0.5, 0.7], [0.1, 0.2, 0.3]])
    assert I.mate_ranks(scores, np.array([2, 0])).tolist() == [2, 3]


def test_mate_index_errors():
    with pytest.raises(ValueError, match="subject 3 has 2 templates"):
        I.mate_index([1], [3, 3, 4])
    with pytest.raises(ValueError, match=r"probe 1 \(subject 9\) has no template"):
        I.mate_index([3, 9], [3, 4])
    assert I.mate_index([4, 9, 3], [3, 4], require_all=False).tolist() == [1, -1, 0]


def test_read_template_subjects(tmp_path):
    p = tmp_path / "ijbc_1N_gallery_G1.csv"
    p.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,100,img/1.jpg\n5,100,img/2.jpg\n2,101,img/3.jpg\n")
    t, s = I.read_template_subjects(p)
    assert t.tolist() == [2, 5] and s.tolist() == [101, 100]
    p.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,100,a\n5,102,b\n")
    with pytest.raises(ValueError, match=r"ijbc_1N_gallery_G1.csv:3: template 5 has subject 102"):
        I.read_template_subjects(p)
    p.write_text("TEMPLATE_ID,SUBJECT_ID\nx,1\n")
    with pytest.raises(ValueError, match=r":2: expected integer"):
        I.read_template_subjects(p)
