"""End-to-end evaluation of a model: verification sets (``.bin`` / HF pair datasets) and IJB-B/C.

:func:`run_verification_sets` is what the training loop calls in-process; :func:`evaluate_model` is what
``facezoo eval`` runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from facezoo.errors import ConfigError, DataError, MissingPathError, did_you_mean, require_path
from facezoo.eval import identification, verification
from facezoo.eval import ijb as ijb_protocol
from facezoo.eval.extract import extract_features, fuse_embeddings
from facezoo.eval.roc import DEFAULT_FARS

_logger = logging.getLogger(__name__)

PAPER_TARGETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")

VerificationSet = Tuple[torch.Tensor, torch.Tensor]


def find_verification_sets(path: Union[str, Path]) -> Dict[str, Path]:
    """Every verification set in the folder ``path``: ``NAME.bin`` files, and Hugging Face pair datasets
    (``NAME/`` folders saved by ``facezoo data convert``, ``NAME.parquet``), by name, sorted."""
    root = require_path(path, "folder of verification sets", kind="dir")
    found: Dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.suffix in (".bin", ".parquet") and p.is_file():
            found.setdefault(p.stem, p)
        elif p.is_dir() and (
            (p / "dataset_info.json").exists()
            or (p / "state.json").exists()
            or (p / "dataset_dict.json").exists()
            or any(p.glob("*.parquet"))
            or any(p.glob("data/*.parquet"))
        ):
            found.setdefault(p.name, p)
    return found


def find_verification_set(path: Union[str, Path], name: str) -> Path:
    """Path of set ``name`` in the folder ``path``: ``name.bin``, else a HF dataset (``name/`` or ``name.parquet``)."""
    root = require_path(path, "folder of verification sets", kind="dir")
    for c in (root / f"{name}.bin", root / name, root / f"{name}.parquet"):
        if c.exists():
            return c
    available = sorted(find_verification_sets(root))
    raise MissingPathError(
        f"{root}: no verification set {name!r} ({name}.bin, {name}/ or {name}.parquet); found "
        f"{', '.join(available) if available else 'none'}{did_you_mean(name, available)}"
    )


def resolve_verification_sets(
    path: Union[str, Path], targets: Optional[Iterable[str]] = None, log: bool = True
) -> Dict[str, Path]:
    """``{name: path}`` of each target in the folder ``path`` (``targets`` None: every set found there, listed in
    the log unless ``log=False``; an empty folder is an error). Reads no images: a wrong name or folder fails at
    once."""
    if targets is None:
        paths = find_verification_sets(path)
        if not paths:
            raise MissingPathError(
                f"{path}: no verification sets in this folder (expected NAME.bin files such as "
                "lfw.bin, or Hugging Face pair datasets NAME/ / NAME.parquet)"
            )
        if log:
            _log_found(path, paths)
        return paths
    return {name: find_verification_set(path, name) for name in targets}


def _log_found(path: Union[str, Path], paths: Mapping[str, Path]) -> None:
    _logger.info("verification sets in %s: %s", path, ", ".join(paths))


def load_verification_set(path: Union[str, Path], progress: bool = True) -> VerificationSet:
    """``(uint8 images (2P, 3, H, W), issame (P,))`` of a ``.bin`` or a Hugging Face pair dataset."""
    from facezoo.data import load_bin, load_pairs_dataset

    p = Path(path)
    return load_bin(p, progress=progress) if p.suffix == ".bin" else load_pairs_dataset(p, progress=progress)


def load_verification_sets(
    path: Union[str, Path], targets: Optional[Iterable[str]] = None, progress: bool = True
) -> Dict[str, VerificationSet]:
    """``{name: (uint8 images (2P, 3, H, W), issame (P,))}`` for each target in the folder ``path``; ``targets``
    None loads every set found there (an empty folder is an error)."""
    return _load_sets(resolve_verification_sets(path, targets), progress)


def _load_sets(paths: Mapping[str, Path], progress: bool) -> Dict[str, VerificationSet]:
    sets = {}
    for name, p in paths.items():
        sets[name] = load_verification_set(p, progress=progress)
        _logger.info("%s: %d pairs from %s", name, len(sets[name][1]), p)
    return sets


def check_finite(name: str, features: torch.Tensor, flip_features: Optional[torch.Tensor] = None) -> None:
    """Refuse non-finite embeddings with the set's name and how many images gave them: they would score 50%
    silently (an untrained insightface-initialized model in eval mode can overflow; a broken checkpoint looks the
    same). ``flip_features``: the flipped images' rows, counted with their image."""
    bad_rows = ~torch.isfinite(features).all(dim=1)
    if flip_features is not None:
        bad_rows |= ~torch.isfinite(flip_features).all(dim=1)
    bad = int(bad_rows.sum())
    if bad:
        first = int(bad_rows.nonzero()[0, 0])
        raise DataError(
            f"{name}: the embeddings of {bad} of {features.shape[0]} images are not finite (NaN or Inf; "
            f"the first is image {first}); the model's output is broken (an untrained or diverged model, "
            "or a checkpoint that does not belong to it)"
        )


def run_verification_sets(
    model: torch.nn.Module,
    sets: Mapping[str, VerificationSet],
    batch_size: int = 128,
    device: Union[str, torch.device, None] = None,
    flip: bool = True,
    nfolds: int = 10,
    accelerator: Any = None,
    progress: bool = True,
) -> Dict[str, Dict[str, Any]]:
    """Evaluate ``model`` on each ``(images, issame)`` set; per set the :func:`verification.evaluate` dict + ``xnorm``.

    ``xnorm`` is the mean L2 norm of the raw embeddings (images and flips), as insightface logs it. Safe to call
    from a training loop: the model's train/eval mode is restored and no gradients are kept.
    """
    results = {}
    for name, (images, issame) in sets.items():
        if images.shape[0] != 2 * len(issame):
            raise DataError(f"{name}: {images.shape[0]} images for {len(issame)} pairs; expected {2 * len(issame)}")
        t0 = time.perf_counter()
        feats, flips = extract_features(
            model, images, batch_size, device, flip=flip, accelerator=accelerator, progress=progress, desc=name
        )
        check_finite(name, feats, flips)
        emb = fuse_embeddings(feats, flips)
        res = verification.evaluate(emb, issame, nfolds=nfolds)
        raw = feats if flips is None else torch.cat([feats, flips])
        res["xnorm"] = float(raw.double().norm(dim=1).mean())
        res["seconds"] = time.perf_counter() - t0
        _logger.info(
            "[%s] accuracy-flip %.5f+-%.5f  TAR@FAR=1e-3 %.5f  XNorm %.4f",
            name,
            res["accuracy"],
            res["accuracy_std"],
            res["tar_at_far"],
            res["xnorm"],
        )
        results[name] = res
    return results


#: IJB 1:1 modes: insightface's default (faceness-weighted, no per-image L2), without the detector score, with L2
IJB_MODES = ("default", "no_faceness", "image_l2")


def run_ijb(
    model: torch.nn.Module,
    path: Union[str, Path],
    target: str = "IJBC",
    batch_size: int = 128,
    device: Union[str, torch.device, None] = None,
    flip: bool = True,
    fars: Sequence[float] = DEFAULT_FARS,
    modes: Sequence[str] = ("default",),
    one_to_n: bool = False,
    accelerator: Any = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Dict[str, Any]:
    """IJB-B/C 1:1 (and optionally 1:N) evaluation of ``model`` on the release folder ``path``.

    ``flip``: flip TTA (``f(img) + f(flip)``, insightface's default), as in :func:`run_verification_sets`.
    ``modes``: any of ``IJB_MODES`` -- ``default`` (faceness-weighted, no per-image L2: insightface's defaults),
    ``no_faceness``, ``image_l2``; one TAR@FAR dict per mode. 1:N runs on the default mode's template features
    when ``path/meta`` holds the 1:N CSVs.
    """
    from facezoo.data.ijb import IJBAlignedImages, read_ijb

    unknown = [m for m in modes if m not in IJB_MODES]
    if unknown:
        raise ConfigError(
            f"unknown IJB mode {unknown[0]!r}; choose from {', '.join(IJB_MODES)}{did_you_mean(unknown[0], IJB_MODES)}"
        )
    root = Path(path)
    meta = read_ijb(root, target)
    feats, flips = extract_features(
        model,
        IJBAlignedImages(meta),
        batch_size,
        device,
        flip=flip,
        accelerator=accelerator,
        num_workers=num_workers,
        progress=progress,
        desc=meta.target,
    )
    check_finite(meta.target, feats, flips)
    out: Dict[str, Any] = {
        "target": meta.target,
        "num_images": len(meta),
        "num_pairs": int(len(meta.t1)),
        "flip": bool(flip),
        "modes": {},
    }
    for mode in modes:
        res = ijb_protocol.evaluate(
            feats,
            meta.templates,
            meta.medias,
            meta.t1,
            meta.t2,
            meta.labels,
            faceness=None if mode == "no_faceness" else meta.faceness,
            fars=fars,
            flip_features=flips,
            normalize_images=mode == "image_l2",
        )
        out["modes"][mode] = res
        _logger.info(
            "[%s %s] TAR@FAR %s",
            meta.target,
            mode,
            "  ".join(f"{f:g}: {100 * t:.2f}" for f, t in res["tar_at_far"].items()),
        )
    files = identification.ijb_1n_files(root, meta.target)
    if one_to_n:
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise MissingPathError("1:N evaluation needs " + ", ".join(missing) + " (the IJB release's 1:N CSVs)")
        img = ijb_protocol.image_features(feats, flips, meta.faceness)
        tfeat, unique_t = ijb_protocol.image_to_template_features(img, meta.templates, meta.medias)
        g1 = identification.read_template_subjects(files["gallery1"])
        g2 = identification.read_template_subjects(files["gallery2"])
        probe_t, probe_s = identification.read_template_subjects(files["probe"])

        def rows(t: np.ndarray, f: Path) -> np.ndarray:
            return ijb_protocol.template_rows(unique_t, t, what=f.name)

        gal_s = np.concatenate([g1[1], g2[1]])
        probe = tfeat[rows(probe_t, files["probe"])]
        s_all = probe @ tfeat[np.concatenate([rows(g1[0], files["gallery1"]), rows(g2[0], files["gallery2"])])].T
        one_n = {"mixed": identification.evaluate_mixed(s_all, probe_s, gal_s)}
        n1 = len(g1[0])
        for key, cols in ((files["gallery1"].stem[-2:], slice(0, n1)), (files["gallery2"].stem[-2:], slice(n1, None))):
            one_n[key] = identification.evaluate_open_set(s_all[:, cols], probe_s, gal_s[cols])
        out["one_to_n"] = one_n
    return out


def resolve_device(spec: Union[str, torch.device, None] = "auto") -> torch.device:
    """``'auto'`` (or None): CUDA when available, else the CPU; anything else must name a torch device."""
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {spec!r} is not a device (auto, cpu, cuda, cuda:1, mps, ...)") from None


def evaluate_model(
    model: Union[str, torch.nn.Module],
    bins: Union[str, Path, None] = None,
    targets: Optional[Sequence[str]] = None,
    ijb: Union[str, Path, None] = None,
    ijb_target: str = "IJBC",
    ijb_modes: Sequence[str] = ("default",),
    ijb_1n: bool = False,
    checkpoint: Union[str, Path, None] = None,
    pretrained: bool = False,
    batch_size: int = 128,
    device: Union[str, torch.device, None] = "auto",
    flip: bool = True,
    nfolds: int = 10,
    num_workers: int = 0,
    accelerator: Any = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Evaluate a model on the verification sets in the folder ``bins`` and / or the IJB release ``ijb``; returns
    the ``results.json`` document (:func:`facezoo.eval.report.build_results`). What ``facezoo eval`` runs.

    ``model``: a module, or a name for :func:`facezoo.models.create_model` (timm name, ``hf-hub:``, ``local-dir:``)
    with ``checkpoint`` / ``pretrained``. ``targets`` None evaluates every set found in ``bins``. Names, paths and
    options are checked before the model is built, and the model is built before any image is read, so a typo or
    a model that cannot load fails at once.
    """
    from facezoo.eval import report
    from facezoo.models import create_model
    from facezoo.models.checkpoints import check_checkpoint_file
    from facezoo.models.factory import check_hub_reachable, check_model_name
    from facezoo.models.pretrained import is_pretrained_tag

    if bins is None and ijb is None:
        raise ConfigError(
            "nothing to evaluate: give a folder of verification sets (bins) and / or an IJB release (ijb)"
        )
    if targets is not None and bins is None:
        raise ConfigError("targets names sets in a folder of verification sets; give bins too")
    unknown = [m for m in ijb_modes if m not in IJB_MODES]
    if unknown:
        raise ConfigError(
            f"unknown IJB mode {unknown[0]!r}; choose from {', '.join(IJB_MODES)}{did_you_mean(unknown[0], IJB_MODES)}"
        )
    if batch_size < 1 or nfolds < 1:
        raise ConfigError(f"batch_size and nfolds must be >= 1, got {batch_size} and {nfolds}")
    device = accelerator.device if accelerator is not None else resolve_device(device)
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        if checkpoint is not None:
            check_checkpoint_file(checkpoint)
        if model.startswith("hf-hub:"):
            check_hub_reachable(model[len("hf-hub:") :])  # before the sets load: no network fails in seconds
        elif not model.startswith("local-dir:"):
            check_model_name(model)
    if ijb is not None:
        require_path(ijb, f"IJB release folder ({ijb_target})", kind="dir")
    set_paths = resolve_verification_sets(bins, targets, log=False) if bins is not None else None
    if isinstance(model, str):
        named_weights = model.startswith(("hf-hub:", "local-dir:")) or is_pretrained_tag(model)
        if not (pretrained or checkpoint is not None or named_weights):
            _logger.warning("%s: no checkpoint and not pretrained: evaluating randomly initialized weights", model)
        model = create_model(model, checkpoint=checkpoint, pretrained=pretrained, num_classes=0, device=device)
    else:
        model = model.to(device)
    model.eval()
    ver = ijb_results = None
    if set_paths is not None:
        if targets is None:
            _log_found(bins, set_paths)  # now that the model is there: an error before it stays one line
        ver = run_verification_sets(
            model,
            _load_sets(set_paths, progress),
            batch_size,
            device,
            flip=flip,
            nfolds=nfolds,
            accelerator=accelerator,
            progress=progress,
        )
    if ijb is not None:
        ijb_results = run_ijb(
            model,
            ijb,
            ijb_target,
            batch_size,
            device,
            flip=flip,
            modes=ijb_modes,
            one_to_n=ijb_1n,
            accelerator=accelerator,
            num_workers=num_workers,
            progress=progress,
        )
    extra = {"checkpoint": None if checkpoint is None else str(checkpoint), "flip": bool(flip), "nfolds": nfolds}
    return report.build_results(name, ver, ijb_results, extra=extra)
