"""``describe_source``: what a data path holds (a training source or a verification set), as a small dict.

``facezoo data info PATH`` prints it; a training loop or a notebook can log it. Paths are checked the way the
readers check them: a local path that does not exist is reported at once, never looked up on the Hub.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

from facezoo.errors import DataError

__all__ = ["describe_source"]


def describe_source(path: Union[str, os.PathLike], split: Optional[str] = None) -> Dict[str, Any]:
    """Describe the data at ``path``.

    * a verification set (``.bin``, or a Hugging Face dataset of image pairs as ``facezoo data convert`` writes):
      ``{"path", "type", "pairs", "positives", "image_shape"}``;
    * a training source (anything :func:`facezoo.data.create_face_source` opens: ``.rec``, identity folders,
      Hugging Face datasets, Hub ids): ``{"path", "type", "images", "num_classes", "image_shape", "first_label"}``,
      reading one image; identity folders add ``"empty_folders"``, the sub-folders with no image files (not
      classes, as in training and ``facezoo data convert``).
    """
    from facezoo.data.sources import check_source_path, create_face_source

    if str(path).endswith(".bin"):
        from facezoo.data.verification import load_bin

        images, issame = load_bin(path)
        return {
            "path": str(path),
            "type": "verification .bin",
            "pairs": len(issame),
            "positives": int(issame.sum()),
            "image_shape": list(images.shape[1:]),
        }
    check_source_path(path)  # before anything is imported or asked: a typo fails at once
    with _quiet_datasets():
        if _is_local_hf(path):  # a pair dataset, or a training set (then opened again below: cached, cheap)
            from facezoo.data.sources import _load_hf

            pairs = _describe_pairs(_load_hf(path, split, streaming=False), str(path))
            if pairs is not None:
                return pairs
        ds = create_face_source(path, split=split) if split is not None else create_face_source(path)
        return _describe_faces(ds, path)


def _describe_faces(ds: Any, path: Any) -> Dict[str, Any]:
    if len(ds) == 0:
        raise DataError(f"{path}: the source holds no images")
    image, label = ds[0]
    info = {
        "path": str(path),
        "type": type(ds).__name__,
        "images": len(ds),
        "num_classes": ds.num_classes,
        "image_shape": list(image.shape),
        "first_label": label,
    }
    if hasattr(ds, "empty_folders"):  # identity folders: sub-folders without images, which are not classes
        info["empty_folders"] = len(ds.empty_folders)
    return info


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars ("Generating train split") while inspecting: the answer is one line."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _is_local_hf(path: Any) -> bool:
    """A local Hugging Face dataset: a ``save_to_disk`` folder, a folder of Parquet / Arrow files (also under
    ``data/``), or a ``.parquet`` / ``.arrow`` file."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path).expanduser()
    if p.is_file():
        return p.suffix in (".parquet", ".arrow")
    if not p.is_dir():
        return False
    if (p / "state.json").exists() or (p / "dataset_dict.json").exists():
        return True
    return any(f.suffix in (".parquet", ".arrow") for d in (p, p / "data") if d.is_dir() for f in d.iterdir())


def _describe_pairs(ds: Any, where: str) -> Optional[Dict[str, Any]]:
    """The verification-set description of a dataset with two image columns and an ``issame`` column, else None."""
    from facezoo.data.image import cell_bytes, decode_rgb
    from facezoo.data.verification import PAIR_COLUMNS

    columns = getattr(ds, "column_names", None) or []
    picked = [next((c for c in names if c in columns), None) for names in PAIR_COLUMNS]
    if None in picked:
        return None
    first, _, same = picked
    import datasets

    ds = ds.cast_column(first, datasets.Image(decode=False))
    shape = (
        list(decode_rgb(cell_bytes(ds[0][first], f"{where}: row 0 {first}"), where=f"{where}: row 0").shape)
        if len(ds)
        else []
    )
    return {
        "path": where,
        "type": "verification pairs (Hugging Face dataset)",
        "pairs": len(ds),
        "positives": int(sum(bool(v) for v in ds[same])),
        "image_shape": shape,
    }
