"""Evaluation: insightface's verification (``.bin``) and IJB-B/C protocols, 1:N identification, and the runner.

* :func:`facezoo.eval.verification.evaluate` -- 10-fold accuracy, TAR@FAR=1e-3 and ROC of paired embeddings.
* :func:`facezoo.eval.ijb.evaluate` -- IJB 1:1 template scores and TAR@FAR (insightface's default mode).
* :mod:`facezoo.eval.identification` -- 1:N rank-k and TPIR@FPIR.
* :func:`facezoo.eval.extract.extract_embeddings` -- flip-TTA embeddings in batches (CPU / GPU / accelerate).
* :func:`facezoo.eval.run_verification_sets` -- evaluate a model on loaded sets in-process (used in training).
* :func:`facezoo.eval.evaluate_model` -- a model on a folder of sets and / or an IJB release (``facezoo eval``).
"""

from __future__ import annotations

from facezoo.eval import identification, ijb, roc, verification
from facezoo.eval.extract import extract_embeddings, extract_features
from facezoo.eval.runner import (
    IJB_MODES,
    PAPER_TARGETS,
    evaluate_model,
    find_verification_sets,
    load_verification_set,
    load_verification_sets,
    resolve_device,
    resolve_verification_sets,
    run_ijb,
    run_verification_sets,
)

__all__ = [
    "verification",
    "ijb",
    "identification",
    "roc",
    "extract_embeddings",
    "extract_features",
    "evaluate_model",
    "find_verification_sets",
    "resolve_verification_sets",
    "load_verification_set",
    "load_verification_sets",
    "run_verification_sets",
    "run_ijb",
    "resolve_device",
    "IJB_MODES",
    "PAPER_TARGETS",
]
