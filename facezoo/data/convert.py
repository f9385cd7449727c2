"""Conversions between the formats the field uses, without re-encoding images.

- ``.rec`` (insightface RecordIO) -> Hugging Face dataset (``image``: Image feature, ``label``), Parquet or Arrow
- Hugging Face dataset -> ``.rec`` + ``.idx`` + ``property`` (grouped by identity, insightface header record)
- verification ``.bin`` <-> Hugging Face pair dataset (``image1``, ``image2``, ``issame``): a pickle-free copy
- ``write_synthetic``: a SyntheticFaces training ``.rec`` and verification ``.bin`` files
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from facezoo.data.image import cell_bytes, encode_image
from facezoo.data.recordio import write_face_records
from facezoo.data.sources import HFFaces, RecordIOFaces, _cell_label
from facezoo.data.verification import load_bin, load_pairs_dataset, write_bin, write_pairs_dataset
from facezoo.errors import MissingPathError

__all__ = ["rec_to_hf", "hf_to_rec", "convert", "write_synthetic", "is_rec_path"]

PathLike = Union[str, os.PathLike]
_CLASSLABEL_MAX = 200_000  # above this, a ClassLabel's name list bloats the schema; use int64 labels


def is_rec_path(path: PathLike) -> bool:
    p = Path(path)
    return p.suffix == ".rec" or (p.is_dir() and (p / "train.rec").exists())


def rec_to_hf(
    src: PathLike, dst: PathLike, format: str = "parquet", progress: bool = True, max_shard_size: str = "500MB"
) -> dict:
    """Copy a face ``.rec`` into a Hugging Face dataset with columns ``image`` (Image) and ``label``.

    ``format='parquet'`` writes ``dst/data/train-*.parquet`` (``load_dataset(dst)``, ready to push to the Hub);
    ``'arrow'`` writes a ``save_to_disk`` folder. The encoded image bytes are copied, not re-encoded.
    """
    import datasets

    rec = RecordIOFaces(src)
    n, ncls = len(rec), rec.num_classes
    label_feature = datasets.ClassLabel(num_classes=ncls) if ncls <= _CLASSLABEL_MAX else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})

    def rows(rec_path: str) -> Iterator[dict]:
        ds = RecordIOFaces(rec_path)
        for i in tqdm(range(len(ds)), desc=f"{Path(rec_path).name} -> {format}", disable=not progress):
            head, data = ds.read_record(i)
            yield {"image": {"bytes": data, "path": None}, "label": ds._label(head)}

    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent if dst.parent.exists() else None) as tmp:
        ds = datasets.Dataset.from_generator(
            rows, gen_kwargs={"rec_path": str(rec.rec_path)}, features=features, cache_dir=tmp
        )
        if format == "arrow":
            ds.save_to_disk(str(dst), max_shard_size=max_shard_size)
        elif format == "parquet":
            nbytes = ds.data.nbytes
            shard = datasets.utils.py_utils.convert_file_size_to_int(max_shard_size)
            shards = max(1, int(np.ceil(nbytes / shard)))
            (dst / "data").mkdir(parents=True, exist_ok=True)
            for k in range(shards):
                name = f"train-{k:05d}-of-{shards:05d}.parquet"
                ds.shard(shards, k, contiguous=True).to_parquet(str(dst / "data" / name))
        else:
            raise ValueError(f"unknown format {format!r}; expected 'parquet' or 'arrow'")
        del ds
    return {"images": n, "num_classes": ncls, "dst": str(dst)}


def hf_to_rec(
    src: Any,
    dst: PathLike,
    split: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Write a Hugging Face face dataset as insightface ``train.rec``/``train.idx``/``property`` in ``dst``
    (a folder, or a ``.rec`` path). Images are grouped by identity (stable sort by label), bytes copied as stored."""
    hf = HFFaces(src, split=split, image_column=image_column, label_column=label_column)
    labels = np.asarray(hf.ds.data.column(hf.label_column).to_numpy(zero_copy_only=False), dtype=np.int64)
    order = np.argsort(labels, kind="stable")

    def items() -> Iterator[tuple[bytes, int]]:
        for i in tqdm(order, desc=f"{hf.source} -> .rec", disable=not progress):
            row = hf.ds[int(i)]
            cell = row[hf.image_column]
            where = f"{hf.source}: row {int(i)}"
            yield cell_bytes(cell, where), _cell_label(row[hf.label_column], where)

    info = write_face_records(dst, items(), num_classes=hf.num_classes)
    return {"images": info["images"], "num_classes": info["num_classes"], "dst": str(info["rec"])}


def convert(
    src: PathLike,
    dst: PathLike,
    format: Optional[str] = None,
    split: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Dispatch on the paths: ``.rec`` -> HF; ``.bin`` -> HF pairs; HF pairs -> ``.bin`` (dst ends in .bin);
    otherwise HF dataset (folder, parquet, Hub id) -> ``.rec``."""
    s, d = str(src), str(dst)
    if is_rec_path(src):
        fmt = format or ("parquet" if not d.endswith(".arrow") else "arrow")
        return rec_to_hf(src, dst, format=fmt, progress=progress)
    if s.endswith(".bin"):
        images, issame = load_bin(src, progress=progress)
        fmt = format or ("parquet" if d.endswith(".parquet") else "arrow")
        write_pairs_dataset(dst, images, issame, format=fmt)
        return {"pairs": len(issame), "dst": d}
    if d.endswith(".bin"):
        images, issame = load_pairs_dataset(src, split=split, progress=progress)
        write_bin(dst, images, issame, format="png")
        return {"pairs": len(issame), "dst": d}
    return hf_to_rec(src, dst, split=split, image_column=image_column, label_column=label_column, progress=progress)


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
