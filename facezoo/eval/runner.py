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

from facezoo.eval import ijb as ijb_protocol
from facezoo.eval import identification, verification
from facezoo.eval.extract import extract_features, fuse_embeddings
from facezoo.eval.roc import DEFAULT_FARS

_LOG = logging.getLogger(__name__)

PAPER_TARGETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")

VerificationSet = Tuple[torch.Tensor, torch.Tensor]


def load_model(name: str, checkpoint: Optional[str] = None, pretrained: bool = False,
               device: Union[str, torch.device] = "cpu", **kwargs: Any) -> torch.nn.Module:
    """A timm model (any timm name, facezoo name, ``hf-hub:`` or ``local-dir:`` id) that outputs embeddings.

    ``num_classes=0`` is passed so classifiers become feature extractors. ``checkpoint`` loads a local
    ``.safetensors`` / ``.pth`` through timm (``pretrained_cfg_overlay=dict(file=...)``, the model's checkpoint
    filter maps foreign layouts). ``hf-hub:``/``local-dir:`` ids always load their weights; a plain name without
    ``checkpoint`` or ``pretrained`` is randomly initialized (logged as a warning).
    """
    import timm

    import facezoo  # noqa: F401  (registers the face models)

    kw: Dict[str, Any] = dict(num_classes=0, **kwargs)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        kw["pretrained_cfg_overlay"] = dict(file=str(path))
        pretrained = True
    elif name.startswith(("hf-hub:", "local-dir:")):
        pretrained = True
    elif not pretrained:
        _LOG.warning("%s: no --checkpoint and not --pretrained: evaluating randomly initialized weights", name)
    model = timm.create_model(name, pretrained=pretrained, **kw)
    return model.to(device).eval()


def find_verification_set(root: Union[str, Path], name: str) -> Path:
    """Path of set ``name`` under ``root``: ``name.bin``, else a HF dataset (``name/`` folder or ``name.parquet``)."""
    root = Path(root)
    candidates = [root / f"{name}.bin", root / name, root / f"{name}.parquet"]
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"verification set {name!r} not found; looked for " + ", ".join(map(str, candidates)))


def load_verification_sets(root: Union[str, Path], targets: Iterable[str], progress: bool = True
                           ) -> Dict[str, VerificationSet]:
    """``{name: (uint8 images (2P, 3, H, W), issame (P,))}`` for each target found under ``root``."""
    from facezoo.data import load_bin, load_pairs_dataset

    sets = {}
    for name in targets:
        path = find_verification_set(root, name)
        sets[name] = load_bin(path, progress=progress) if path.suffix == ".bin" else \
            load_pairs_dataset(path, progress=progress)
        _LOG.info("%s: %d pairs from %s", name, len(sets[name][1]), path)
    return sets


def run_verification_sets(model: torch.nn.Module, sets: Mapping[str, VerificationSet], batch_size: int = 128,
                          device: Union[str, torch.device, None] = None, flip: bool = True, nfolds: int = 10,
                          accelerator: Any = None, progress: bool = True) -> Dict[str, Dict[str, Any]]:
    """Evaluate ``model`` on each ``(images, issame)`` set; per set the :func:`verification.evaluate` dict + ``xnorm``.

    ``xnorm`` is the mean L2 norm of the raw embeddings (images and flips), as insightface logs it. Safe to call
    from a training loop: the model's train/eval mode is restored and no gradients are kept.
    """
    results = {}
    for name, (images, issame) in sets.items():
        if images.shape[0] != 2 * len(issame):
            raise ValueError(f"{name}: {images.shape[0]} images for {len(issame)} pairs")
        t0 = time.perf_counter()
        feats, flips = extract_features(model, images, batch_size, device, flip=flip, accelerator=accelerator,
                                        progress=progress, desc=name)
        emb = fuse_embeddings(feats, flips)
        res = verification.evaluate(emb, issame, nfolds=nfolds)
        raw = feats if flips is None else torch.cat([feats, flips])
        res["xnorm"] = float(raw.double().norm(dim=1).mean())
        res["seconds"] = time.perf_counter() - t0
        _LOG.info("[%s] accuracy-flip %.5f+-%.5f  TAR@FAR=1e-3 %.5f  XNorm %.4f", name, res["accuracy"],
                  res["accuracy_std"], res["tar_at_far"], res["xnorm"])
        results[name] = res
    return results


def run_ijb(model: torch.nn.Module, root: Union[str, Path], target: str = "IJBC", batch_size: int = 128,
            device: Union[str, torch.device, None] = None, fars: Sequence[float] = DEFAULT_FARS,
            modes: Sequence[str] = ("default",), one_to_n: bool = False, accelerator: Any = None,
            num_workers: int = 0, progress: bool = True) -> Dict[str, Any]:
    """IJB-B/C 1:1 (and optionally 1:N) evaluation of ``model`` on the release under ``root``.

    ``modes``: any of ``default`` (flip + faceness, no per-image L2: insightface's defaults), ``no_flip``,
    ``no_faceness``, ``image_l2``; one TAR@FAR dict per mode. 1:N runs on the default mode's template features
    when ``root/meta`` holds the 1:N CSVs.
    """
    from facezoo.data.ijb import IJBAlignedImages, read_ijb

    meta = read_ijb(root, target)
    flip_needed = any(m != "no_flip" for m in modes)
    feats, flips = extract_features(model, IJBAlignedImages(meta), batch_size, device, flip=flip_needed,
                                    accelerator=accelerator, num_workers=num_workers, progress=progress,
                                    desc=meta.target)
    out: Dict[str, Any] = {"target": meta.target, "num_images": len(meta), "num_pairs": int(len(meta.t1)),
                           "modes": {}}
    options = {"default": dict(), "no_flip": dict(flip=False), "no_faceness": dict(faceness=False),
               "image_l2": dict(normalize_images=True)}
    for mode in modes:
        if mode not in options:
            raise ValueError(f"unknown IJB mode {mode!r}; choose from {sorted(options)}")
        o = options[mode]
        res = ijb_protocol.evaluate(
            feats, meta.templates, meta.medias, meta.t1, meta.t2, meta.labels,
            faceness=meta.faceness if o.get("faceness", True) else None, fars=fars,
            flip_features=flips if o.get("flip", True) else None,
            normalize_images=o.get("normalize_images", False))
        out["modes"][mode] = res
        _LOG.info("[%s %s] TAR@FAR %s", meta.target, mode,
                  "  ".join(f"{f:g}: {100 * t:.2f}" for f, t in res["tar_at_far"].items()))
    files = identification.ijb_1n_files(root, meta.target)
    if one_to_n:
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError("1:N evaluation needs " + ", ".join(missing))
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
