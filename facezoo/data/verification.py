"""Verification pair sets: insightface ``.bin`` files and Hugging Face pair datasets.

A ``.bin`` (lfw, cfp_fp, agedb_30, calfw, cplfw, ...) is a pickle of ``(list of encoded images, list of bools)``
where images ``2i`` and ``2i+1`` form pair ``i``. Pickles can run code when loaded, so :func:`load_bin` uses a
restricted unpickler that builds only bytes/str/list/tuple/bool (and Python 3's protocol-2 spelling of bytes,
``_codecs.encode(str, 'latin1')``); any other global or object is refused before it is created.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from facezoo.data.image import cell_bytes, decode_rgb, encode_image, to_uint8_chw
from facezoo.errors import ConfigError, DataError, UnknownNameError, did_you_mean, require_path

__all__ = ["load_bin", "write_bin", "load_pairs_dataset", "write_pairs_dataset", "UnsafePickleError"]

PathLike = Union[str, os.PathLike]


class UnsafePickleError(DataError):
    """The pickle asks for something other than bytes/str/list/tuple/bool; it was not executed."""


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes in protocol <= 2 as _codecs.encode(latin1_text, 'latin1'); allow exactly that.
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(
            f"_codecs.encode is only allowed as (str, 'latin1'), got ({type(text).__name__}, {encoding!r})"
        )
    return text.encode("latin-1", errors)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise UnsafePickleError(
            f"{self._source}: refusing to load: the pickle references {module}.{name}, but a verification .bin may "
            "only contain bytes, str, lists, tuples and bools (loading it unrestricted could run arbitrary code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refusing to load: the pickle uses persistent ids")


_ALLOWED = (bytes, bytearray, str, list, tuple, bool, type(None))


def _check_plain(obj: Any, source: str, depth: int = 0) -> None:
    if not isinstance(obj, _ALLOWED) and not (isinstance(obj, int) and obj in (0, 1)):
        raise UnsafePickleError(
            f"{source}: refusing object of type {type(obj).__name__} (only bytes/str/list/tuple/bool)"
        )
    if isinstance(obj, (list, tuple)) and depth < 3:
        for item in obj:
            if not isinstance(item, (bytes, bytearray, bool)):
                _check_plain(item, source, depth + 1)


def _safe_unpickle(path: Path) -> Any:
    require_path(path, "verification .bin file", kind="file")
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # truncated/garbled pickles raise many types
            raise DataError(f"{path}: not a readable verification .bin pickle: {type(exc).__name__}: {exc}") from exc
    _check_plain(obj, str(path))
    return obj


def _to_bytes(item: Any) -> bytes:
    if isinstance(item, str):  # Python 2 str decoded with a text encoding
        return item.encode("latin-1")
    return bytes(item)


def _stack_pairs(
    images: Sequence[torch.Tensor], issame: Sequence[Any], source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if len(images) % 2:
        raise ValueError(f"{source}: {len(images)} images is odd; pairs need an even count")
    if len(images) != 2 * len(issame):
        raise ValueError(f"{source}: {len(images)} images but {len(issame)} issame labels (expected {2 * len(issame)})")
    if not images:
        raise ValueError(f"{source}: no pairs")
    shape = tuple(images[0].shape)
    for i, im in enumerate(images):
        if tuple(im.shape) != shape:
            raise ValueError(f"{source}: image {i} has shape {tuple(im.shape)}, image 0 has {shape}; all must match")
    return torch.stack(list(images)), torch.tensor([bool(x) for x in issame], dtype=torch.bool)


def load_bin(path: PathLike, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an insightface verification ``.bin`` safely.

    Returns ``(images, issame)``: uint8 RGB ``(2P, 3, H, W)`` (112x112 for the standard sets) and bool ``(P,)``.
    Never executes code from the file: see the module docstring.
    """
    path = Path(path)
    obj = _safe_unpickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(
            f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}"
            + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else "")
        )
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise DataError(f"{path}: expected lists of images and of issame flags")
    for j, flag in enumerate(issame):
        if not isinstance(flag, (bool, int)) or flag not in (0, 1):
            raise DataError(f"{path}: issame[{j}] is {flag!r}, expected a bool")
    if len(bins) % 2 or len(bins) != 2 * len(issame):
        raise DataError(f"{path}: {len(bins)} images and {len(issame)} issame labels; expected 2 images per pair")
    images = [
        decode_rgb(_to_bytes(b), where=f"{path}: image {i}")
        for i, b in enumerate(tqdm(bins, desc=f"decode {path.name}", disable=not progress))
    ]
    return _stack_pairs(images, issame, str(path))


def _as_image_list(images: Union[torch.Tensor, np.ndarray, Sequence[Any]]) -> list[torch.Tensor]:
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        if isinstance(images, np.ndarray):  # N,H,W,3 arrays are the numpy convention
            images = torch.from_numpy(images).permute(0, 3, 1, 2) if images.shape[-1] == 3 else torch.from_numpy(images)
        return [to_uint8_chw(im) for im in images]
    return [to_uint8_chw(im) for im in images]


def write_bin(
    path: PathLike,
    images: Union[torch.Tensor, np.ndarray, Sequence[Any]],
    issame: Sequence[Any],
    format: str = "jpeg",
    quality: int = 95,
) -> None:
    """Write an insightface ``.bin``: a pickle of (list of JPEG-or-PNG bytes, list of bools); pair i = images 2i and
    2i+1."""
    ims = _as_image_list(images)
    flags = [bool(x) for x in (issame.tolist() if hasattr(issame, "tolist") else issame)]
    if len(ims) != 2 * len(flags):
        raise ValueError(f"{path}: {len(ims)} images for {len(flags)} pairs; expected {2 * len(flags)}")
    bins = [encode_image(im, format=format, quality=quality) for im in ims]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump((bins, flags), f, protocol=4)
    os.replace(tmp, path)


# ---------------------------------------------------------------- Hugging Face pair datasets

_FIRST = ("image1", "img1", "image_1", "image_a", "left", "first")
_SECOND = ("image2", "img2", "image_2", "image_b", "right", "second")
_SAME = ("issame", "is_same", "same", "label", "labels")
#: the column names a pair dataset's first image, second image and issame flag may have (first match wins)
PAIR_COLUMNS = (_FIRST, _SECOND, _SAME)


def _open_hf(path: PathLike, split: Optional[str]) -> Any:
    import datasets

    p = Path(path)
    if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(p))
    elif p.is_file() and p.suffix == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(p), split="train")
    elif p.is_dir():
        ds = datasets.load_dataset(str(p))
    else:
        require_path(p, "pair dataset (a save_to_disk folder, a folder of data files or a .parquet file)")
        raise DataError(
            f"{path}: not a pair dataset (expected a save_to_disk folder, a folder of data files or a .parquet file)"
        )
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise ConfigError(f"{path}: has splits {list(ds)}; pass split=")
            split = next(iter(ds))
        if split not in ds:
            raise UnknownNameError(f"{path}: no split {split!r}; available: {list(ds)}{did_you_mean(split, ds)}")
        ds = ds[split]
    return ds


def _pick(columns: Sequence[str], names: Sequence[str], what: str, source: str) -> str:
    for n in names:
        if n in columns:
            return n
    raise DataError(f"{source}: no {what} column; expected one of {list(names)}, found {list(columns)}")


def load_pairs_dataset(
    path: PathLike, split: Optional[str] = None, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a verification set stored as a Hugging Face dataset of image pairs (same output as :func:`load_bin`).

    ``path``: a ``save_to_disk`` folder, a ``.parquet`` file, or a folder of data files. Columns: two Image columns
    (``image1``/``image2`` or similar) and a bool/int ``issame`` (or ``label``) column.
    """
    import datasets

    ds = _open_hf(path, split)
    c1 = _pick(ds.column_names, _FIRST, "first-image", str(path))
    c2 = _pick(ds.column_names, _SECOND, "second-image", str(path))
    cs = _pick(ds.column_names, _SAME, "issame", str(path))
    ds = ds.cast_column(c1, datasets.Image(decode=False)).cast_column(c2, datasets.Image(decode=False))
    images: list[torch.Tensor] = []
    flags: list[bool] = []
    for i, row in enumerate(tqdm(ds, desc=f"decode {Path(path).name}", disable=not progress)):
        for c in (c1, c2):
            images.append(decode_rgb(cell_bytes(row[c], f"{path}: row {i} {c}"), where=f"{path}: row {i} column {c}"))
        v = row[cs]
        if v is None or (not isinstance(v, (bool, int, np.integer, np.bool_))) or int(v) not in (0, 1):
            raise DataError(f"{path}: row {i} column {cs} is {v!r}, expected a bool or 0/1")
        flags.append(bool(v))
    return _stack_pairs(images, flags, str(path))


def write_pairs_dataset(
    path: PathLike,
    images: Union[torch.Tensor, np.ndarray, Sequence[Any]],
    issame: Sequence[Any],
    format: str = "arrow",
    image_format: str = "png",
) -> None:
    """Write pairs as a Hugging Face dataset with columns ``image1``, ``image2`` (Image feature) and ``issame`` (bool).

    ``format='arrow'`` writes a ``save_to_disk`` folder; ``'parquet'`` writes one ``.parquet`` file (``path``).
    PNG by default so a round trip is lossless.
    """
    import datasets

    ims = _as_image_list(images)
    flags = [bool(x) for x in (issame.tolist() if hasattr(issame, "tolist") else issame)]
    if len(ims) != 2 * len(flags):
        raise ValueError(f"{path}: {len(ims)} images for {len(flags)} pairs; expected {2 * len(flags)}")
    enc = [encode_image(im, format=image_format) for im in ims]
    features = datasets.Features(
        {"image1": datasets.Image(), "image2": datasets.Image(), "issame": datasets.Value("bool")}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image1": [{"bytes": b, "path": None} for b in enc[0::2]],
            "image2": [{"bytes": b, "path": None} for b in enc[1::2]],
            "issame": flags,
        },
        features=features,
    )
    if format == "arrow":
        ds.save_to_disk(str(path))
    elif format == "parquet":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(path))
    else:
        raise ValueError(f"unknown format {format!r}; expected 'arrow' or 'parquet'")
