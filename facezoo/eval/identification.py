"""1:N identification: CMC (rank-k) and TPIR@FPIR from a probe x gallery score matrix, vectorized.

Two protocols:

* :func:`evaluate_mixed` reproduces insightface's ``ijb_1n.py``: the gallery is G1 + G2 (every probe subject has
  exactly one gallery template); rank-k = mate among the k best gallery scores; its "TPIR at FAR f" takes the
  threshold ``th`` = the ``ceil(Q * f)``-th largest of all non-mate scores (Q probes) and reports the fraction of
  probes whose mate score is ``> th``.
* :func:`evaluate_open_set` is the NIST open-set protocol on one gallery (G1 or G2): probes whose subject is in
  the gallery are mated, the others non-mated. FPIR(t) = fraction of non-mated probes whose best score is
  ``> t``; TPIR(t) = fraction of mated probes whose mate is rank 1 and scores ``> t``. For a target FPIR f the
  threshold is the ``floor(f * N_nonmated) + 1``-th largest non-mated best score (so FPIR <= f).

Rank of a mate = 1 + number of gallery templates scoring strictly higher (ties resolved in the probe's favour;
the reference's unstable ``argsort`` leaves them arbitrary).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterable, Tuple, Union

import numpy as np

from facezoo.eval._arrays import ArrayLike, l2_normalize, to_numpy


def similarity(probe_feats: ArrayLike, gallery_feats: ArrayLike, normalize: bool = True) -> np.ndarray:
    """Cosine (``normalize``) or dot-product score matrix (Q, G), float64."""
    p = to_numpy(probe_feats, np.float64)
    g = to_numpy(gallery_feats, np.float64)
    if p.ndim != 2 or g.ndim != 2 or p.shape[1] != g.shape[1]:
        raise ValueError(f"probe and gallery features must be (Q, D) and (G, D), got {p.shape} and {g.shape}")
    if normalize:
        p, g = l2_normalize(p), l2_normalize(g)
    return p @ g.T


def mate_index(probe_ids: ArrayLike, gallery_ids: ArrayLike, require_all: bool = True) -> np.ndarray:
    """Gallery row of each probe's subject, -1 for non-mated probes; gallery subjects must be unique."""
    pid = to_numpy(probe_ids).reshape(-1)
    gid = to_numpy(gallery_ids).reshape(-1)
    uniq, counts = np.unique(gid, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        raise ValueError(f"gallery subject {dup} has {counts[counts > 1][0]} templates; expected one per subject")
    order = np.argsort(gid, kind="stable")
    pos = np.minimum(np.searchsorted(gid[order], pid), len(gid) - 1)
    found = gid[order][pos] == pid
    idx = np.where(found, order[pos], -1)
    if require_all and not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise ValueError(
            f"probe {i} (subject {pid[i]}) has no template in the gallery; {int((~found).sum())} probes are non-mated"
        )
    return idx


def mate_ranks(scores: np.ndarray, mates: np.ndarray) -> np.ndarray:
    """1-based rank of the mate of each (mated) probe: 1 + number of gallery scores strictly above it."""
    rows = np.arange(scores.shape[0])
    mate_scores = scores[rows, mates]
    return 1 + (scores > mate_scores[:, None]).sum(1)


def cmc(ranks: np.ndarray, ks: Iterable[int]) -> Dict[int, float]:
    """Fraction of probes whose mate rank is <= k, for each k."""
    return {int(k): float(np.mean(ranks <= k)) for k in ks}


def evaluate_mixed(
    scores: ArrayLike,
    probe_ids: ArrayLike,
    gallery_ids: ArrayLike,
    ranks: Iterable[int] = (1, 5, 10),
    fars: Iterable[float] = (0.01, 0.1),
) -> Dict[str, Any]:
    """insightface ``ijb_1n.py`` metrics from a (Q, G) score matrix (module docstring)."""
    s = to_numpy(scores, np.float64)
    mates = mate_index(probe_ids, gallery_ids, require_all=True)
    q, g = s.shape
    r = mate_ranks(s, mates)
    pos = s[np.arange(q), mates]
    neg_mask = np.ones_like(s, dtype=bool)
    neg_mask[np.arange(q), mates] = False
    neg = s[neg_mask]
    fars = [float(f) for f in fars]
    tpir, thresholds = {}, {}
    for far in fars:
        k = math.ceil(q * far)
        if k < 1 or k > neg.size:
            raise ValueError(f"FAR {far} needs the {k}-th largest of {neg.size} non-mate scores")
        th = float(np.partition(neg, neg.size - k)[neg.size - k])
        thresholds[far] = th
        tpir[far] = float(np.sum(pos > th) / q)
    return {
        "cmc": cmc(r, ranks),
        "tpir_at_fpir": tpir,
        "thresholds": thresholds,
        "num_probes": int(q),
        "num_gallery": int(g),
    }


def evaluate_open_set(
    scores: ArrayLike,
    probe_ids: ArrayLike,
    gallery_ids: ArrayLike,
    ranks: Iterable[int] = (1, 5, 10),
    fpirs: Iterable[float] = (0.01, 0.1),
) -> Dict[str, Any]:
    """NIST open-set metrics from a (Q, G) score matrix: CMC over mated probes and TPIR@FPIR (module docstring)."""
    s = to_numpy(scores, np.float64)
    mates = mate_index(probe_ids, gallery_ids, require_all=False)
    mated = mates >= 0
    if not mated.any():
        raise ValueError("no probe subject is in the gallery")
    sm = s[mated]
    r = mate_ranks(sm, mates[mated])
    mate_scores = sm[np.arange(sm.shape[0]), mates[mated]]
    best_nonmated = np.sort(s[~mated].max(1))[::-1] if (~mated).any() else np.zeros(0)
    tpir, thresholds = {}, {}
    for f in fpirs:
        f = float(f)
        if best_nonmated.size == 0:
            raise ValueError("TPIR@FPIR needs non-mated probes (subjects absent from the gallery)")
        k = int(math.floor(f * best_nonmated.size))
        th = float(best_nonmated[k]) if k < best_nonmated.size else -np.inf
        thresholds[f] = th
        tpir[f] = float(np.mean((r == 1) & (mate_scores > th)))
    return {
        "cmc": cmc(r, ranks),
        "tpir_at_fpir": tpir,
        "thresholds": thresholds,
        "num_mated": int(mated.sum()),
        "num_nonmated": int((~mated).sum()),
        "num_gallery": int(s.shape[1]),
    }


def read_template_subjects(path: Union[str, Path]) -> Tuple[np.ndarray, np.ndarray]:
    """Read an IJB 1:N CSV (``TEMPLATE_ID,SUBJECT_ID,...`` with a header line): unique templates and their subjects.

    One row per image; a template's rows must agree on the subject (error names file and line otherwise).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IJB 1:N meta file not found")
    subject_of: Dict[int, Tuple[int, int]] = {}
    with open(path, encoding="utf-8") as f:
        next(f, None)  # header
        for lineno, line in enumerate(f, 2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(",")
            try:
                tid, sid = int(parts[0]), int(parts[1])
            except (ValueError, IndexError):
                raise ValueError(
                    f"{path}:{lineno}: expected integer TEMPLATE_ID,SUBJECT_ID, got {line.strip()!r}"
                ) from None
            if tid in subject_of and subject_of[tid][0] != sid:
                raise ValueError(
                    f"{path}:{lineno}: template {tid} has subject {sid}, but subject "
                    f"{subject_of[tid][0]} on line {subject_of[tid][1]}"
                )
            subject_of.setdefault(tid, (sid, lineno))
    templates = np.array(sorted(subject_of), dtype=np.int64)
    return templates, np.array([subject_of[t][0] for t in templates], dtype=np.int64)


def ijb_1n_files(root: Union[str, Path], target: str = "IJBC") -> Dict[str, Path]:
    """Paths of the 1:N meta files of insightface's release (G1/G2 for IJB-C, S1/S2 for IJB-B, mixed probes)."""
    t = target.lower()
    g = ("G1", "G2") if t == "ijbc" else ("S1", "S2")
    meta = Path(root) / "meta"
    return {
        "gallery1": meta / f"{t}_1N_gallery_{g[0]}.csv",
        "gallery2": meta / f"{t}_1N_gallery_{g[1]}.csv",
        "probe": meta / f"{t}_1N_probe_mixed.csv",
    }
