"""Export folders: ``model.safetensors`` + timm's ``config.json`` + ``README.md``, written atomically.

The weights and ``config.json`` come from timm's own ``save_for_hf`` (so ``timm.create_model('local-dir:DIR')``
and ``'hf-hub:ORG/NAME'`` read them as any timm model), with ``layout`` and ``embed_dim`` always in ``model_args``
and facezoo's metadata in a ``facezoo`` block at the root of ``config.json`` (timm rejects unknown keys inside
``pretrained_cfg``). The folder is built in a temporary sibling and renamed into place, so a crash never leaves a
half-written export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from facezoo.errors import CheckpointError, ConfigError, MissingPathError, UnknownNameError, require_path
from facezoo.hub.card import card_from_facts, describe_model, unwrap_model
from facezoo.hub.results import ResultsLike, load_results

__all__ = [
    "save_pretrained",
    "check_export_folder",
    "check_output_folder",
    "EXPORT_FILES",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "CARD_NAME",
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
#: what an export folder holds, and all that ``facezoo push`` uploads from it
EXPORT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)


def save_pretrained(
    model: nn.Module,
    out_dir: Union[str, os.PathLike],
    results: Optional[ResultsLike] = None,
    training: Optional[Mapping[str, Any]] = None,
    base_model: Optional[str] = None,
    *,
    datasets: Optional[Sequence[str]] = None,
    license: Optional[str] = None,
    overwrite: bool = False,
    repo_id: Optional[str] = None,
) -> Path:
    """Write ``model`` as a publishable folder: ``model.safetensors``, ``config.json``, ``README.md`` (model card).

    Args:
        model: a facezoo model created through timm (wrappers of torch.compile / DDP are looked through).
        out_dir: the folder to create; an existing non-empty one is replaced only with ``overwrite=True``.
        results: ``facezoo eval``'s results.json (a path or the loaded dict): the card's metrics and model-index.
        training: the resolved training recipe, shown in the card as YAML.
        base_model: Hub id (or path) of the model this one was fine-tuned from.
        datasets: training datasets for the card (Hub ids or names).
        license: the card's license (default: derived from the training data and base model: facezoo.hub.licenses).
        repo_id: the Hub id the card's usage names, when already known (``facezoo push`` fills it in otherwise).

    Returns the folder. Everything is checked (model, results, recipe, destination) before anything is written.
    """
    model = unwrap_model(model)
    facts = describe_model(model)
    doc = load_results(results) if results is not None else None
    if doc is not None:
        _warn_if_other_model(doc["model"], facts["architecture"])
    out = check_output_folder(out_dir, overwrite)
    card = card_from_facts(facts, doc, training, base_model, datasets=datasets, license=license, repo_id=repo_id)
    block: Dict[str, Any] = {
        "version": _version(),
        "family": facts["family"],
        "head": facts["head"],
        "stem_kernel": facts["stem_kernel"],
        "layout": facts["layout"],
        "embed_dim": facts["embed_dim"],
        "evaluated": doc is not None,
    }
    if base_model:
        block["base_model"] = base_model
    if repo_id:
        block["repo_id"] = repo_id

    from timm.models import save_for_hf

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with _contiguous_tensors(model):  # safetensors refuses channels-last (strided) weights
            save_for_hf(
                model,
                str(tmp),
                model_config={"facezoo": block},
                safe_serialization=True,
                model_args={"layout": facts["layout"], "embed_dim": facts["embed_dim"]},
            )
        card.save(tmp / CARD_NAME)
        os.chmod(tmp, 0o755)  # mkdtemp and safetensors make them private
        for name in EXPORT_FILES:
            os.chmod(tmp / name, 0o644)
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.debug("wrote %s (%s)", out, ", ".join(EXPORT_FILES))
    return out


@contextlib.contextmanager
def _contiguous_tensors(model: torch.nn.Module) -> Iterator[None]:
    """Give every parameter and buffer contiguous memory while the block runs (a channels-last model's conv weights
    are strided), then put the original tensors back; values are unchanged."""
    swapped = []
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_contiguous():
            swapped.append((t, t.data))
            t.data = t.data.contiguous()
    try:
        yield
    finally:
        for t, data in swapped:
            t.data = data


def check_output_folder(out_dir: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """``Path(out_dir)`` if an export may be written there: absent, empty, or replaced with ``overwrite``."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is a file; the export needs a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: folder exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    return out


def _warn_if_other_model(evaluated: str, architecture: str) -> None:
    """results.json names the model it evaluated: say so when that is another architecture (a mixed-up file)."""
    import timm

    base = evaluated.split(".", 1)[0]
    if timm.is_model(base) and base != architecture:
        _logger.warning(
            "the results evaluated %r, but the exported model is %r: check that --results belongs to these weights",
            evaluated,
            architecture,
        )


def _version() -> str:
    from facezoo import __version__

    return __version__


def _replace_folder(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest`` (a rename), replacing what was there."""
    if not dest.exists():
        os.replace(new, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_export_folder(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``config.json`` of a facezoo export folder, after checking the folder loads through timm.

    Checks, with one-line errors naming the file and the field: the folder and ``config.json`` exist and parse,
    ``architecture`` is a facezoo model, ``pretrained_cfg`` has only keys timm accepts, ``model_args`` build the
    model, and ``model.safetensors`` (no pickle) has exactly the model's tensors.
    """
    import timm
    from timm.models import PretrainedCfg

    from facezoo.models.families import checkpoint_filter_for, face_model_names

    folder = require_path(path, "export folder", kind="dir")
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise MissingPathError(
            f"{config}: no config.json in this folder (expected an export folder: config.json, "
            f"{WEIGHTS_NAME}, {CARD_NAME}, as 'facezoo export hub' writes)"
        )
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{config}: not JSON ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise ConfigError(f"{config}: no 'architecture' field (expected timm's config.json)")
    arch = cfg["architecture"]
    model_names = face_model_names()
    if arch not in model_names:
        from facezoo.errors import did_you_mean

        raise UnknownNameError(
            f"{config}: field 'architecture' is {arch!r}, not a facezoo model"
            f"{did_you_mean(arch, model_names)}; 'facezoo models' lists them"
        )
    pcfg = cfg.get("pretrained_cfg")
    if not isinstance(pcfg, dict):
        raise ConfigError(f"{config}: field 'pretrained_cfg' must be an object (timm's pretrained config)")
    try:
        PretrainedCfg(**pcfg)
    except TypeError:
        known = set(PretrainedCfg.__dataclass_fields__)
        unknown = sorted(set(pcfg) - known)
        raise ConfigError(
            f"{config}: field 'pretrained_cfg' has keys timm rejects: {', '.join(unknown)}; extra "
            "metadata belongs at the root of config.json"
        ) from None
    model_args = cfg.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise ConfigError(f"{config}: field 'model_args' must be an object of {arch} keyword arguments")
    try:
        meta = timm.create_model(arch, device="meta", **model_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config}: field 'model_args' does not build {arch}: {exc}") from None
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pth")]
        extra = f" (found {', '.join(pickles)}: pickle files are not published)" if pickles else ""
        raise MissingPathError(f"{weights}: no weights in the export folder{extra}; export with 'facezoo export hub'")
    _check_weights(weights, meta, checkpoint_filter_for(meta))
    return cfg


def _check_weights(weights: Path, model: nn.Module, filter_fn: Any) -> None:
    """``weights`` holds exactly ``model``'s tensors (keys and shapes; read from the safetensors header only)."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"{weights}: not a safetensors file ({' '.join(str(exc).split())[:160]})") from None
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        filter_fn(state, model)
    except CheckpointError as exc:
        raise CheckpointError(f"{weights}: {exc}") from None
