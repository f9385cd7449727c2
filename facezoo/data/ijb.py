"""IJB-B / IJB-C 1:1 verification data: meta-file readers and aligned images.

Layout (insightface's release)::

    root/meta/{ijbb,ijbc}_face_tid_mid.txt         image_name template_id media_id
    root/meta/{ijbb,ijbc}_template_pair_label.txt  template_1 template_2 label
    root/meta/{ijbb,ijbc}_name_5pts_score.txt      image_name x1 y1 ... x5 y5 faceness_score
    root/loose_crop/<image_name>

Images are aligned to the arcface template with their 5 landmarks (:func:`facezoo.data.align.align_face`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch.utils.data import Dataset

from facezoo.data.align import align_face
from facezoo.data.image import decode_rgb
from facezoo.errors import DataError, require_path

__all__ = ["IJBMeta", "read_ijb", "IJBAlignedImages"]


@dataclass
class IJBMeta:
    """Everything the IJB 1:1 protocol needs, in the order of ``*_face_tid_mid.txt``."""

    root: Path
    target: str
    image_names: list[str]
    templates: np.ndarray  # int64 (N,)
    medias: np.ndarray  # int64 (N,)
    landmarks: np.ndarray  # float32 (N, 5, 2)
    faceness: np.ndarray  # float32 (N,)
    t1: np.ndarray  # int64 (M,)
    t2: np.ndarray  # int64 (M,)
    labels: np.ndarray  # int64 (M,)

    def __len__(self) -> int:
        return len(self.image_names)


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IJB meta file not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if parts:
                out.append((lineno, parts))
    return out


def _ints(path: Path, lineno: int, parts: list[str], n: int, what: str) -> list[int]:
    if len(parts) != n:
        raise DataError(f"{path}:{lineno}: expected {n} fields ({what}), got {len(parts)}: {' '.join(parts)!r}")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise DataError(f"{path}:{lineno}: expected integers ({what}), got {' '.join(parts)!r}") from None


def read_ijb(path: Union[str, os.PathLike], target: str = "IJBC", check_images: bool = True) -> IJBMeta:
    """Read and cross-check the IJB meta files under the release folder ``path`` for ``target`` ('IJBB' or 'IJBC').

    Raises :class:`DataError` naming file and line for malformed lines, images in one meta file but not the other,
    templates in the pair list with no images, and (``check_images``) image files missing from ``loose_crop/``.
    """
    root = require_path(path, f"IJB release folder ({target}: meta/ and loose_crop/)", kind="dir")
    t = target.lower()
    if t not in ("ijbb", "ijbc"):
        raise ValueError(f"target must be 'IJBB' or 'IJBC', got {target!r}")
    meta = root / "meta"
    f_tid = meta / f"{t}_face_tid_mid.txt"
    f_pair = meta / f"{t}_template_pair_label.txt"
    f_lmk = meta / f"{t}_name_5pts_score.txt"

    names: list[str] = []
    templates, medias = [], []
    seen: dict[str, int] = {}
    for lineno, parts in _lines(f_tid):
        if len(parts) != 3:
            raise DataError(f"{f_tid}:{lineno}: expected 3 fields (image template media), got {len(parts)}")
        tid, mid = _ints(f_tid, lineno, parts[1:], 2, "template media")
        if parts[0] in seen:
            raise DataError(f"{f_tid}:{lineno}: image {parts[0]!r} listed twice (first on line {seen[parts[0]]})")
        seen[parts[0]] = lineno
        names.append(parts[0])
        templates.append(tid)
        medias.append(mid)

    lmk_by_name: dict[str, tuple[np.ndarray, float, int]] = {}
    for lineno, parts in _lines(f_lmk):
        if len(parts) != 12:
            raise DataError(
                f"{f_lmk}:{lineno}: expected 12 fields (image, 10 landmark coordinates, score), got {len(parts)}"
            )
        try:
            vals = np.array([float(p) for p in parts[1:]], dtype=np.float32)
        except ValueError:
            raise DataError(f"{f_lmk}:{lineno}: landmarks and score must be numbers: {' '.join(parts[1:])!r}") from None
        if not np.isfinite(vals).all():
            raise DataError(f"{f_lmk}:{lineno}: non-finite landmark or score")
        if parts[0] in lmk_by_name:
            raise DataError(f"{f_lmk}:{lineno}: image {parts[0]!r} listed twice")
        lmk_by_name[parts[0]] = (vals[:10].reshape(5, 2), float(vals[10]), lineno)

    missing = [n for n in names if n not in lmk_by_name]
    if missing:
        raise DataError(
            f"{f_tid}:{seen[missing[0]]}: image {missing[0]!r} has no landmarks in {f_lmk} ({len(missing)} such images)"
        )
    extra = [n for n in lmk_by_name if n not in seen]
    if extra:
        raise DataError(
            f"{f_lmk}:{lmk_by_name[extra[0]][2]}: image {extra[0]!r} is not in {f_tid} ({len(extra)} such images)"
        )

    t1, t2, labels = [], [], []
    known = set(templates)
    for lineno, parts in _lines(f_pair):
        a, b, lab = _ints(f_pair, lineno, parts, 3, "template_1 template_2 label")
        for tmpl in (a, b):
            if tmpl not in known:
                raise DataError(f"{f_pair}:{lineno}: template {tmpl} has no images in {f_tid}")
        if lab not in (0, 1):
            raise DataError(f"{f_pair}:{lineno}: label must be 0 or 1, got {lab}")
        t1.append(a)
        t2.append(b)
        labels.append(lab)

    if check_images:
        crop = root / "loose_crop"
        if not crop.is_dir():
            raise FileNotFoundError(f"{crop}: image folder not found")
        present = set(os.listdir(crop))
        for n in names:
            if n not in present and not (crop / n).is_file():
                raise DataError(f"{f_tid}:{seen[n]}: image file {crop / n} not found")

    return IJBMeta(
        root=root,
        target=target.upper(),
        image_names=names,
        templates=np.asarray(templates, dtype=np.int64),
        medias=np.asarray(medias, dtype=np.int64),
        landmarks=(
            np.stack([lmk_by_name[n][0] for n in names]).astype(np.float32)
            if names
            else np.zeros((0, 5, 2), np.float32)
        ),
        faceness=np.asarray([lmk_by_name[n][1] for n in names], dtype=np.float32),
        t1=np.asarray(t1, dtype=np.int64),
        t2=np.asarray(t2, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
    )


class IJBAlignedImages(Dataset):
    """Item ``i``: ``loose_crop/<image_names[i]>`` aligned with ``landmarks[i]``, uint8 RGB (3, 112, 112)."""

    def __init__(self, meta: IJBMeta, size: int = 112) -> None:
        self.meta = meta
        self.size = size

    def __len__(self) -> int:
        return len(self.meta.image_names)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.meta.root / "loose_crop" / self.meta.image_names[i]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: image {i} of {self.meta.target} not found") from None
        return align_face(decode_rgb(data, where=str(path)), self.meta.landmarks[i], size=self.size)
