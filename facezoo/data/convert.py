"""Conversions between the formats the field uses, without re-encoding images.

- ``.rec`` (insightface RecordIO) -> Hugging Face dataset (``image``: Image feature, ``label``), Parquet or Arrow
- Hugging Face dataset or identity folders -> ``.rec`` + ``.idx`` + ``property`` (grouped by identity, insightface
  header record)
- verification ``.bin`` <-> Hugging Face pair dataset (``image1``, ``image2``, ``issame``): a pickle-free copy
- ``write_synthetic``: a SyntheticFaces training ``.rec`` and verification ``.bin`` files

Every training image is decoded once on the way (the bytes are still copied, not re-encoded), so nothing training
could not read is copied: a bad record or an unreadable or empty image stops the conversion with a
:class:`DataError` naming the file and the record, offset, row or path (no half-written ``.rec`` is left), or with
``on_error='skip'`` is left out, logged and counted (``"skipped"`` in the result). Identity folders keep the class
list that training and ``facezoo data info`` see (:func:`facezoo.data.sources.identity_folders`: a sub-folder with
no image files is not a class).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple, TypeVar, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from facezoo.data.describe import _quiet_datasets
from facezoo.data.image import cell_bytes, decode_rgb, encode_image
from facezoo.data.recordio import write_face_records
from facezoo.data.sources import (
    IMAGE_EXTENSIONS,
    HFFaces,
    RecordIOFaces,
    SkipCounter,
    _cell_label,
    _log_skip,
    identity_folders,
    is_identity_folders,
)
from facezoo.data.verification import load_bin, load_pairs_dataset, write_bin, write_pairs_dataset
from facezoo.errors import DataError, FacezooError, MissingPathError, require_path

__all__ = ["rec_to_hf", "hf_to_rec", "folders_to_rec", "convert", "write_synthetic", "is_rec_path"]

_logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
_CLASSLABEL_MAX = 200_000  # above this, a ClassLabel's name list bloats the schema; use int64 labels
T = TypeVar("T")


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _checked_image(data: bytes, where: str) -> bytes:
    """``data`` if it decodes as an image (as training would decode it), else :class:`DataError` naming ``where``."""
    decode_rgb(data, where=where)
    return data


def _readable(items: Iterable[Callable[[], T]], on_error: str, skips: SkipCounter, what: str) -> Iterator[T]:
    """The results of ``items`` (thunks that read one item each); a :class:`DataError` stops the iteration, or with
    ``on_error='skip'`` is logged, counted in ``skips`` and the item left out."""
    for read in items:
        try:
            yield read()
        except DataError as exc:
            if on_error == "raise":
                raise
            _log_skip(skips, what, exc)


def _result(info: Dict[str, Any], on_error: str, skips: SkipCounter) -> Dict[str, Any]:
    """The summary a conversion returns; ``skipped`` (with a log line) when ``on_error='skip'``."""
    if on_error == "skip":
        info["skipped"] = skips.total
        _logger.warning("on_error=skip: %d unreadable image(s) or record(s) left out of %s", skips.total, info["dst"])
    return info


def _write_rec_or_nothing(dst: PathLike, items: Iterable[Tuple[bytes, int]], num_classes: int) -> Dict[str, Any]:
    """:func:`write_face_records`, removing what it wrote when an item fails: a stopped conversion leaves no
    ``.rec`` that would look complete."""
    p = Path(dst)
    rec = p if p.suffix == ".rec" else p / "train.rec"
    try:
        return write_face_records(dst, items, num_classes=num_classes)
    except BaseException:
        for f in (rec, rec.with_suffix(".idx")):
            f.unlink(missing_ok=True)
        raise


def is_rec_path(path: PathLike) -> bool:
    p = Path(path)
    return p.suffix == ".rec" or (p.is_dir() and (p / "train.rec").exists())


def rec_to_hf(
    src: PathLike,
    dst: PathLike,
    format: str = "parquet",
    progress: bool = True,
    max_shard_size: str = "500MB",
    on_error: str = "raise",
) -> dict:
    """Copy a face ``.rec`` into a Hugging Face dataset with columns ``image`` (Image) and ``label``.

    ``format='parquet'`` writes ``dst/data/train-*.parquet`` (``load_dataset(dst)``, ready to push to the Hub);
    ``'arrow'`` writes a ``save_to_disk`` folder. The encoded image bytes are copied, not re-encoded. A bad record
    (or one whose image does not decode) raises :class:`DataError` with the file, record key and byte offset, or
    with ``on_error='skip'`` is left out and counted.
    """
    import datasets

    _check_on_error(on_error)
    if format not in ("parquet", "arrow"):
        raise ValueError(f"unknown format {format!r}; expected 'parquet' or 'arrow'")
    rec = RecordIOFaces(src)
    ncls = _rec_num_classes(rec, on_error)
    label_feature = datasets.ClassLabel(num_classes=ncls) if ncls <= _CLASSLABEL_MAX else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    skips = SkipCounter()

    def read(i: int) -> Callable[[], dict]:
        def row() -> dict:
            head, data = rec.read_record(i)
            return {"image": {"bytes": _checked_image(data, rec._where(i)), "path": None}, "label": rec._label(head)}

        return row

    def rows(rec_path: str) -> Iterator[dict]:  # rec_path: for the dataset's fingerprint
        bar = tqdm(range(len(rec)), desc=f"{Path(rec_path).name} -> {format}", disable=not progress)
        yield from _readable((read(i) for i in bar), on_error, skips, "record")

    dst = Path(dst)
    quiet = _quiet_datasets() if not progress else contextlib.nullcontext()
    with quiet, tempfile.TemporaryDirectory(dir=dst.parent if dst.parent.exists() else None) as tmp:
        try:
            ds = datasets.Dataset.from_generator(
                rows, gen_kwargs={"rec_path": str(rec.rec_path)}, features=features, cache_dir=tmp
            )
        except datasets.exceptions.DatasetGenerationError as exc:  # it wraps the reader's error; show that one
            if isinstance(exc.__cause__, FacezooError):
                raise exc.__cause__ from None
            raise
        n = len(ds)
        if format == "arrow":
            ds.save_to_disk(str(dst), max_shard_size=max_shard_size)
        else:
            nbytes = ds.data.nbytes
            shard = datasets.utils.py_utils.convert_file_size_to_int(max_shard_size)
            shards = max(1, int(np.ceil(nbytes / shard)))
            (dst / "data").mkdir(parents=True, exist_ok=True)
            for k in range(shards):
                name = f"train-{k:05d}-of-{shards:05d}.parquet"
                ds.shard(shards, k, contiguous=True).to_parquet(str(dst / "data" / name))
        del ds
    return _result({"images": n, "num_classes": ncls, "dst": str(dst)}, on_error, skips)


def _rec_num_classes(rec: RecordIOFaces, on_error: str) -> int:
    """The class count of a ``.rec`` (``property``, header record or a label scan); with ``on_error='skip'`` a
    scan passes over unreadable records (the copy counts them)."""
    try:
        return rec.num_classes
    except DataError:
        if on_error == "raise":
            raise
    top = -1
    for i in range(len(rec)):
        try:
            top = max(top, rec.label(i))
        except DataError:
            pass
    return top + 1


def hf_to_rec(
    src: Any,
    dst: PathLike,
    split: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    progress: bool = True,
    on_error: str = "raise",
) -> dict:
    """Write a Hugging Face face dataset as insightface ``train.rec``/``train.idx``/``property`` in ``dst``
    (a folder, or a ``.rec`` path). Images are grouped by identity (stable sort by label), bytes copied as stored.
    A row whose image is missing, empty or does not decode raises :class:`DataError` naming the row, or with
    ``on_error='skip'`` is left out and counted."""
    _check_on_error(on_error)
    hf = HFFaces(src, split=split, image_column=image_column, label_column=label_column)
    labels = np.asarray(hf.ds.data.column(hf.label_column).to_numpy(zero_copy_only=False), dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    skips = SkipCounter()

    def read(i: int) -> Callable[[], Tuple[bytes, int]]:
        def item() -> Tuple[bytes, int]:
            row = hf.ds[i]
            where = f"{hf.source}: row {i}"
            label = _cell_label(row[hf.label_column], where)
            return _checked_image(cell_bytes(row[hf.image_column], where), f"{where} column {hf.image_column}"), label

        return item

    bar = tqdm(order.tolist(), desc=f"{hf.source} -> .rec", disable=not progress)
    items = _readable((read(i) for i in bar), on_error, skips, "row")
    info = _write_rec_or_nothing(dst, items, num_classes=hf.num_classes)
    return _result(
        {"images": info["images"], "num_classes": info["num_classes"], "dst": str(info["rec"])}, on_error, skips
    )


def folders_to_rec(src: PathLike, dst: PathLike, progress: bool = True, on_error: str = "raise") -> dict:
    """Write identity folders (``src/<identity>/<image>``) as insightface ``train.rec``/``train.idx``/``property``.

    The classes are those training sees (:func:`facezoo.data.sources.identity_folders`: sorted sub-folders that
    hold image files; one with none is not a class, and is logged), so the labels do not shift. An image that
    cannot be read, is empty or does not decode raises :class:`DataError` with its path, or with
    ``on_error='skip'`` is left out and counted (its class stays, with its other images)."""
    _check_on_error(on_error)
    root = require_path(src, "folder of identity folders", kind="dir")
    classes, samples, empty = identity_folders(root, IMAGE_EXTENSIONS)
    if not samples:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in identity sub-folders")
    skips = SkipCounter()

    def read(rel: str, label: int) -> Callable[[], Tuple[bytes, int]]:
        def item() -> Tuple[bytes, int]:
            path = root / rel
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{path}: cannot read image: {exc.strerror or exc}") from None
            return _checked_image(data, str(path)), label

        return item

    bar = tqdm(samples, desc=f"{root.name} -> .rec", disable=not progress)
    items = _readable((read(rel, label) for rel, label in bar), on_error, skips, "image")
    info = _write_rec_or_nothing(dst, items, num_classes=len(classes))
    result = {"images": info["images"], "num_classes": info["num_classes"], "dst": str(info["rec"])}
    result["empty_folders"] = len(empty)
    return _result(result, on_error, skips)


def convert(
    src: PathLike,
    dst: PathLike,
    format: Optional[str] = None,
    split: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    progress: bool = True,
    on_error: str = "raise",
) -> dict:
    """Dispatch on the paths: ``.rec`` -> HF; ``.bin`` -> HF pairs; HF pairs -> ``.bin`` (dst ends in .bin);
    identity folders -> ``.rec``; otherwise HF dataset (folder, parquet, Hub id) -> ``.rec``. ``on_error``
    (``'raise'`` or ``'skip'``) applies to training images and records."""
    _check_on_error(on_error)
    s, d = str(src), str(dst)
    if is_rec_path(src):
        fmt = format or ("parquet" if not d.endswith(".arrow") else "arrow")
        return rec_to_hf(src, dst, format=fmt, progress=progress, on_error=on_error)
    if s.endswith(".bin"):
        images, issame = load_bin(src, progress=progress)
        fmt = format or ("parquet" if d.endswith(".parquet") else "arrow")
        write_pairs_dataset(dst, images, issame, format=fmt)
        return {"pairs": len(issame), "dst": d}
    if d.endswith(".bin"):
        images, issame = load_pairs_dataset(src, split=split, progress=progress)
        write_bin(dst, images, issame, format="png")
        return {"pairs": len(issame), "dst": d}
    if is_identity_folders(src):
        return folders_to_rec(src, dst, progress=progress, on_error=on_error)
    return hf_to_rec(
        src,
        dst,
        split=split,
        image_column=image_column,
        label_column=label_column,
        progress=progress,
        on_error=on_error,
    )


class _EncodedSynthetic(torch.utils.data.Dataset):
    def __init__(self, ds: Any, quality: int) -> None:
        self.ds, self.quality = ds, quality

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        image, label = self.ds[i]
        return encode_image(image, "jpeg", self.quality), label


def write_synthetic(
    path: PathLike,
    num_identities: int = 1000,
    images_per_identity: int = 20,
    num_pairs: int = 3000,
    seed: int = 0,
    difficulty: float = 1.0,
    workers: int = 0,
    verify_name: str = "synth_verify",
    quality: int = 95,
    progress: bool = True,
) -> dict:
    """Write ``path/train.rec``, ``train.idx``, ``property`` (SyntheticFaces, JPEG) and ``path/<verify_name>.bin``
    (held-out pairs from disjoint identities)."""
    from facezoo.data.synthetic import SyntheticFaces, synthetic_pairs

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise MissingPathError(f"{out}: expected a folder to write the synthetic set into, found a file")
    ds = SyntheticFaces(num_identities, images_per_identity, seed=seed, difficulty=difficulty)  # checks the sizes
    out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(_EncodedSynthetic(ds, quality), batch_size=None, num_workers=workers)
    items = tqdm(loader, total=len(ds), desc="synthesize train.rec", disable=not progress)
    info = write_face_records(out, ((data, int(label)) for data, label in items), num_classes=num_identities)
    result = {"images": info["images"], "num_classes": info["num_classes"], "rec": str(info["rec"])}
    if num_pairs > 0:
        images, issame = synthetic_pairs(num_pairs, seed=seed, difficulty=difficulty)
        write_bin(out / f"{verify_name}.bin", images, issame, format="jpeg", quality=quality)
        result["bin"] = str(out / f"{verify_name}.bin")
        result["pairs"] = num_pairs
    return result
