"""Embeddings of every image of an aligned-face source, written to Parquet (what ``facezoo embed`` runs).

A source is what training reads (:func:`facezoo.data.create_face_source`: identity folders, a ``.rec``, a Hugging
Face dataset) or a plain folder of images. Each row of the output is one image: its ``path`` (relative to the
folder) or its ``index`` (``.rec`` and Hugging Face sources), its ``label`` when the source has one, and its
``embedding`` (float32 list). The file reads with ``datasets.load_dataset("parquet", data_files=FILE)`` or
``pyarrow.parquet.read_table``.

Embeddings are the model's raw outputs, or with flip TTA (the default, as ``facezoo eval``) ``f(img) + f(flip(img))``;
``normalize=True`` L2-normalizes them. Under ``accelerate launch`` each process embeds a contiguous shard of the images
and writes it beside the output; the main process then joins the shards in order into the one file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from facezoo.data.image import resize_faces
from facezoo.errors import ConfigError, DataError, MissingPathError

__all__ = ["EmbedItems", "open_embed_source", "embed_to_parquet"]

_logger = logging.getLogger(__name__)

Loader = Callable[[int], Tuple[torch.Tensor, Optional[int]]]


@dataclass
class EmbedItems(Dataset):
    """The images of a source by position: ``load(i) -> (uint8 CHW RGB, label or None)``, and what names them
    (``paths``: file paths relative to the source folder, or None: rows are named by index)."""

    size: int
    load: Loader
    paths: Optional[List[str]] = None
    has_labels: bool = False

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Tuple[int, Optional[torch.Tensor], Optional[int], Optional[str]]:
        """``(i, image, label, None)``, or ``(i, None, None, reason)`` when the image cannot be read or decoded."""
        try:
            image, label = self.load(i)
        except DataError as exc:
            return i, None, None, str(exc)
        return i, image, label, None


def open_embed_source(source: Union[str, os.PathLike]) -> EmbedItems:
    """The images of ``source``: a plain folder of images (``path`` rows, no label), a folder of identity folders
    (``path`` and ``label``), a ``.rec`` or a Hugging Face dataset (``index`` and ``label``)."""
    from facezoo.data.image import decode_rgb
    from facezoo.data.sources import IMAGE_EXTENSIONS, ImageFolderFaces, check_source_path, create_face_source

    check_source_path(source)
    p = Path(source).expanduser()
    if p.is_dir():
        entries = sorted(os.scandir(p), key=lambda e: e.name)
        images = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
        if images and not any(e.is_dir() for e in entries):

            def load_file(i: int) -> Tuple[torch.Tensor, Optional[int]]:
                path = p / images[i]
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise DataError(f"{path}: cannot read image: {exc}") from exc
                return decode_rgb(data, where=str(path)), None

            return EmbedItems(len(images), load_file, paths=images)
    faces = create_face_source(source)
    if not hasattr(faces, "load") or not hasattr(faces, "__len__"):
        raise ConfigError(f"{source}: a streamed source cannot be embedded by position; use a local copy")
    paths = [rel for rel, _ in faces.samples] if isinstance(faces, ImageFolderFaces) else None
    return EmbedItems(len(faces), faces.load, paths=paths, has_labels=True)


def _collate(size: Tuple[int, int]) -> Callable[[List[Any]], Tuple[List[int], torch.Tensor, List[Any], List[Any]]]:
    def collate(batch: List[Any]) -> Tuple[List[int], torch.Tensor, List[Any], List[Any]]:
        good = [b for b in batch if b[1] is not None]
        bad = [(b[0], b[3]) for b in batch if b[1] is None]
        ims = [_resized(b[1], size) for b in good]
        x = torch.stack(ims) if ims else torch.zeros(0, 3, *size, dtype=torch.uint8)
        return [b[0] for b in good], x, [b[2] for b in good], bad

    return collate


def _resized(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    return resize_faces(image[None], size)[0]


@torch.no_grad()
def embed_to_parquet(
    model: Union[str, torch.nn.Module],
    source: Union[str, os.PathLike],
    output: Union[str, os.PathLike],
    checkpoint: Union[str, os.PathLike, None] = None,
    pretrained: bool = False,
    normalize: bool = False,
    flip: bool = True,
    batch_size: int = 128,
    device: Union[str, torch.device, None] = "auto",
    on_error: str = "raise",
    num_workers: int = 0,
    accelerator: Any = None,
    progress: bool = True,
) -> dict:
    """Embed every image of ``source`` with ``model`` and write ``output`` (a ``.parquet`` file); what
    ``facezoo embed`` runs. Returns ``{'output', 'rows', 'skipped', 'dim'}``.

    Args:
        model: a module, or a name for :func:`facezoo.models.create_model`: a pretrained tag
            (``iresnet100.adaface_webface12m``), a timm name with ``checkpoint`` or ``pretrained``, ``hf-hub:`` or
            ``local-dir:``.
        source: a plain folder of images, a folder of identity folders, a ``.rec``, or a Hugging Face dataset.
        normalize: L2-normalize the embeddings (after the flip sum).
        flip: flip TTA as ``facezoo eval``: the embedding is ``f(img) + f(flip(img))``.
        on_error: ``'raise'``: an image that cannot be read or decoded stops the run with its path or index;
            ``'skip'``: it gets no row, and the skipped images are counted (and the first named) in the log.
        accelerator: an ``accelerate.Accelerator``: each process embeds its shard on its device; the main process
            writes ``output``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facezoo.eval.extract import model_preprocessing
    from facezoo.eval.runner import resolve_device
    from facezoo.models import create_model

    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    output = Path(output)
    if output.suffix != ".parquet":
        raise ConfigError(f"{output}: the output must end in .parquet")
    if not output.parent.is_dir():
        raise MissingPathError(f"{output.parent}: no such folder for the output")
    items = open_embed_source(source)  # a wrong source fails before the model is built
    dev = accelerator.device if accelerator is not None else resolve_device(device)
    if isinstance(model, str):
        model = create_model(model, checkpoint=checkpoint, pretrained=pretrained, num_classes=0, device=dev)
    model = model.to(dev).eval()
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    indices = list(range(len(items)))
    if world > 1:
        with accelerator.split_between_processes(indices) as mine:  # contiguous shards, no padding
            indices = list(mine)
    size, mean, std = model_preprocessing(model)
    mean, std = mean.to(dev).view(1, 3, 1, 1), std.to(dev).view(1, 3, 1, 1)
    loader = DataLoader(
        torch.utils.data.Subset(items, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate(size),
    )
    part = (
        output.with_name(f"{output.name}.rank{rank}.partial")
        if world > 1
        else output.with_name(output.name + ".partial")
    )
    writer: Optional[pq.ParquetWriter] = None
    rows = skipped = 0
    first_skip = None
    dim = 0
    try:
        for idx, x, labels, bad in tqdm(loader, desc="embed", unit="batch", disable=not progress or rank != 0):
            for _, reason in bad:
                if on_error == "raise":
                    raise DataError(reason)
                skipped += 1
                first_skip = first_skip or reason
            if not idx:
                continue
            emb = _embed(model, x.to(dev), mean, std, flip, normalize)
            dim = emb.shape[1]
            table = _table(items, idx, labels, emb.cpu().numpy())
            if writer is None:
                writer = pq.ParquetWriter(str(part), table.schema)
            writer.write_table(table)
            rows += len(idx)
        if writer is None:  # no image was readable: an empty file with the schema still reads
            writer = pq.ParquetWriter(str(part), _table(items, [], [], None).schema)
    except BaseException:
        if writer is not None:
            writer.close()
        part.unlink(missing_ok=True)  # no partial file is left behind
        raise
    writer.close()
    if skipped:
        _logger.warning("skipped %d unreadable images (process %d); the first: %s", skipped, rank, first_skip)
    if world > 1:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            parts = [output.with_name(f"{output.name}.rank{r}.partial") for r in range(world)]
            merged = output.with_name(output.name + ".partial")
            tables = [pq.read_table(str(p)) for p in parts]
            schema = next((t.schema for t in tables if t.num_rows), tables[0].schema)
            pq.write_table(pa.concat_tables([t.cast(schema) for t in tables]), str(merged))
            for p in parts:
                p.unlink()
            os.replace(merged, output)
            rows = sum(t.num_rows for t in tables)
            skipped = len(items) - rows
        accelerator.wait_for_everyone()
    else:
        os.replace(part, output)
    if rank == 0:
        _logger.info("wrote %d embeddings to %s (%d skipped)", rows, output, skipped)
    return {"output": str(output), "rows": rows, "skipped": skipped, "dim": dim}


def _embed(
    model: torch.nn.Module, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, flip: bool, normalize: bool
) -> torch.Tensor:
    x = (x.float().div_(255) - mean) / std
    out = _output(model(x))
    if flip:
        out = out + _output(model(x.flip(3)))
    return F.normalize(out, dim=1) if normalize else out


def _output(y: Any) -> torch.Tensor:
    y = y[0] if isinstance(y, (tuple, list)) else y
    if y.ndim != 2:
        raise ConfigError(f"model output has shape {tuple(y.shape)}, expected (batch, embedding)")
    return y.float()


def _table(items: EmbedItems, idx: List[int], labels: List[Any], emb: Any) -> Any:
    import pyarrow as pa

    cols = {}
    if items.paths is not None:
        cols["path"] = pa.array([items.paths[i] for i in idx], type=pa.string())
    else:
        cols["index"] = pa.array(idx, type=pa.int64())
    if items.has_labels:
        cols["label"] = pa.array(labels, type=pa.int64())
    values = [] if emb is None else list(emb.astype("float32"))
    cols["embedding"] = pa.array(values, type=pa.list_(pa.float32()))
    return pa.table(cols)
