"""``facezoo eval``'s ``results.json`` as model-card input: read, checked field by field, turned into model-index.

A card's metrics must come from a real evaluation, so anything that is not ``facezoo eval`` output (another JSON,
a hand-edited file with a wrong field) is refused with the file and the field named, before anything is written.
The model-index uses the field's dataset names (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, IJB-B, IJB-C) and values in
percent, as the papers report them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Union

from huggingface_hub import EvalResult

from facezoo.errors import ConfigError, require_path
from facezoo.eval.report import display_name

__all__ = ["load_results", "create_eval_results", "ijb_card_mode", "TASK_TYPE"]

#: the Hub task the embeddings serve (also the card's pipeline_tag)
TASK_TYPE = "image-feature-extraction"
_IJB_TARGETS = ("IJBB", "IJBC")

ResultsLike = Union[str, os.PathLike, Mapping[str, Any]]


def load_results(path: ResultsLike) -> Dict[str, Any]:
    """The checked ``results.json`` of ``facezoo eval`` (its path, or the dict already loaded).

    Raises :class:`ConfigError` naming the file and the field when it is not ``facezoo eval`` output.
    """
    if isinstance(path, Mapping):
        source, doc = "results", dict(path)
    else:
        path = require_path(path, "results file (facezoo eval's results.json)", kind="file")
        source = str(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"{source}: not JSON ({exc}); expected the results.json that 'facezoo eval' writes"
            ) from None
    _check_results(doc, source)
    return doc


def _fail(source: str, field: str, expected: str, got: Any = ...) -> ConfigError:
    tail = "" if got is ... else f", got {got!r}"[:120]
    return ConfigError(
        f"{source}: field '{field}' must be {expected}{tail}; expected the results.json that 'facezoo eval' writes"
    )


def _is_rate(value: Any, allow_none: bool = False) -> bool:
    if value is None:
        return allow_none
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value <= 1.0
    )


def _check_results(doc: Any, source: str) -> None:
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{source}: not a 'facezoo eval' results.json (a JSON {type(doc).__name__}, expected an "
            "object with 'model' and 'verification' and/or 'ijb')"
        )
    for key in ("model", "facezoo_version"):
        if not isinstance(doc.get(key), str):
            raise (
                _fail(source, key, "a string", doc.get(key))
                if key in doc
                else ConfigError(f"{source}: not a 'facezoo eval' results.json (no '{key}' field)")
            )
    if "verification" not in doc and "ijb" not in doc:
        raise ConfigError(f"{source}: no 'verification' or 'ijb' field: the file holds no evaluation results")
    ver = doc.get("verification")
    if "verification" in doc:
        if not isinstance(ver, dict) or not ver:
            raise _fail(source, "verification", "an object of verification sets", ver)
        for name, r in ver.items():
            if not isinstance(r, dict):
                raise _fail(source, f"verification.{name}", "an object with accuracy and accuracy_std", r)
            for key in ("accuracy", "accuracy_std"):
                if not _is_rate(r.get(key)):
                    raise _fail(source, f"verification.{name}.{key}", "a number in [0, 1]", r.get(key))
    if "ijb" in doc:
        ijb = doc["ijb"]
        if not isinstance(ijb, dict):
            raise _fail(source, "ijb", "an object with 'target' and 'modes'", ijb)
        if ijb.get("target") not in _IJB_TARGETS:
            raise _fail(source, "ijb.target", "'IJBB' or 'IJBC'", ijb.get("target"))
        modes = ijb.get("modes")
        if not isinstance(modes, dict) or not modes:
            raise _fail(source, "ijb.modes", "an object of IJB modes (e.g. 'default')", modes)
        for mode, r in modes.items():
            tars = r.get("tar_at_far") if isinstance(r, dict) else None
            if not isinstance(tars, dict) or not tars:
                raise _fail(source, f"ijb.modes.{mode}.tar_at_far", "an object of FAR -> TAR", tars)
            for far, tar in tars.items():
                try:
                    float(far)
                except ValueError:
                    raise _fail(
                        source, f"ijb.modes.{mode}.tar_at_far", "keyed by FAR values like '1e-4'", far
                    ) from None
                if not _is_rate(tar, allow_none=True):
                    raise _fail(source, f"ijb.modes.{mode}.tar_at_far.{far}", "a number in [0, 1] or null", tar)


def ijb_card_mode(results: Mapping[str, Any]) -> Optional[str]:
    """The IJB mode whose numbers go into the model-index: insightface's ``default`` when evaluated, else the first."""
    modes = (results.get("ijb") or {}).get("modes") or {}
    if not modes:
        return None
    return "default" if "default" in modes else next(iter(modes))


def _percent(rate: float) -> float:
    return round(100.0 * float(rate), 2)


def create_eval_results(results: Mapping[str, Any]) -> List[EvalResult]:
    """model-index entries: each verification set's accuracy and the IJB TAR@FAR values (percent).

    IJB enters with one mode (:func:`ijb_card_mode`); the card's table shows every mode that was evaluated.
    """
    out: List[EvalResult] = []
    for name, r in (results.get("verification") or {}).items():
        out.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name="Face Verification",
                dataset_type=name,
                dataset_name=display_name(name),
                dataset_split="test",
                metric_type="accuracy",
                metric_name="Accuracy (%)",
                metric_value=_percent(r["accuracy"]),
            )
        )
    mode = ijb_card_mode(results)
    if mode is not None:
        ijb = results["ijb"]
        for far, tar in ijb["modes"][mode]["tar_at_far"].items():
            if tar is None:
                continue
            out.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    task_name="Face Verification (IJB 1:1, templates)",
                    dataset_type=ijb["target"].lower(),
                    dataset_name=display_name(ijb["target"]),
                    dataset_split="test",
                    metric_type=f"TAR@FAR={far}",
                    metric_name=f"TAR@FAR={far} (%)",
                    metric_value=_percent(tar),
                )
            )
    return out
