"""What a recipe's ``data`` and ``eval`` sections name, opened and checked before training starts."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from facezoo.data.image import resize_faces
from facezoo.errors import DataError, MissingPathError
from facezoo.train.config import Recipe

__all__ = [
    "InMemoryFaces",
    "build_train_source",
    "build_eval_sets",
    "check_inputs",
    "ignore_stop_signals",
    "max_label",
    "render_synthetic",
    "stop_signals_blocked",
]

_logger = logging.getLogger(__name__)


class InMemoryFaces(Dataset):
    """Decoded uint8 faces held in memory (``images`` (N, 3, H, W), ``labels`` (N,)): a training source like the
    others (``len``, ``ds[i] -> (image, label)``, ``num_classes``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        self.images, self.labels, self.num_classes = images, labels.to(torch.int64), int(num_classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM / SIGINT, so a signal sent to the whole process
    group (``kill -TERM -PGID``, Ctrl-C, a launcher's ``killpg``) stops only the main process, which finishes its
    step, writes a checkpoint and then shuts its workers down; a worker killed first would turn the stop into
    "DataLoader worker ... killed by signal". A worker whose main process is gone still exits (torch's watchdog)."""
    for s in _STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by stop_signals_blocked() while the worker started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold SIGTERM / SIGINT back in this thread while DataLoader workers start (they inherit the mask until
    :func:`ignore_stop_signals` runs), so no signal reaches a worker before it ignores them; held signals reach this
    process when the block ends. A no-op where the platform has no ``pthread_sigmask``."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def render_synthetic(ds: Dataset, size: Tuple[int, int], workers: int, progress: bool) -> torch.Tensor:
    """Every image of a ``SyntheticFaces`` set, rendered once (``workers`` processes) and resized to ``size``."""
    from tqdm.auto import tqdm

    loader = DataLoader(ds, batch_size=256, num_workers=workers, shuffle=False, generator=torch.Generator())
    out = torch.empty((len(ds), 3, *size), dtype=torch.uint8)
    at = 0
    for images, _ in tqdm(loader, desc="render synthetic faces", unit="batch", disable=not progress):
        out[at : at + len(images)] = resize_faces(images, size)
        at += len(images)
    return out


def build_train_source(recipe: Recipe, input_size: Sequence[int], progress: bool = True) -> Any:
    """The training set of ``data.train``: built-in synthetic faces (rendered once into memory with
    ``data.synthetic.cache``), or any facezoo source (``facezoo.data.create_face_source``)."""
    from facezoo.data import SyntheticFaces, create_face_source

    d = recipe.data
    if d.train == "synthetic":
        s = d.synthetic
        ds = SyntheticFaces(
            s.identities, s.images_per_identity, seed=s.seed, difficulty=s.difficulty, num_classes=d.num_classes
        )
        if not s.cache:
            return ds
        size = (int(input_size[-2]), int(input_size[-1]))
        images = render_synthetic(ds, size, d.num_workers, progress)
        labels = torch.arange(len(ds)) // s.images_per_identity
        _logger.info(
            "rendered %d synthetic faces (%d identities) at %dx%d into memory (%.0f MB)",
            len(ds),
            s.identities,
            size[0],
            size[1],
            images.numel() / 2**20,
        )
        return InMemoryFaces(images, labels, ds.num_classes)
    try:
        return create_face_source(d.train, on_error=d.on_error, num_classes=d.num_classes)
    except (MissingPathError, DataError) as exc:
        text = str(exc)
        raise type(exc)(text if text.startswith("data.train") else f"data.train: {text}") from None


def max_label(ds: Any) -> Optional[int]:
    """The largest label of a source when it is cheap to know (in memory, folders, Arrow columns, small .rec
    files); None otherwise (every batch is still checked during training)."""
    from facezoo.data import HFFaces, ImageFolderFaces, RecordIOFaces, SyntheticFaces

    if isinstance(ds, InMemoryFaces):
        return int(ds.labels.max()) if len(ds) else None
    if isinstance(ds, SyntheticFaces):
        return ds.num_identities - 1
    if isinstance(ds, ImageFolderFaces):
        return max(ds.targets) if ds.targets else None
    if isinstance(ds, HFFaces):
        import pyarrow.compute as pc

        col = ds.ds.data.column(ds.label_column)
        return int(pc.max(col).as_py()) if len(col) else None
    if isinstance(ds, RecordIOFaces) and len(ds) <= 1_000_000:
        labels = ds.labels()
        return int(labels.max()) if len(labels) else None
    return None


def check_inputs(recipe: Recipe, world_size: int) -> None:
    """What can be checked before a model is built or data is read: ``data.train`` and every ``eval.targets`` entry
    exist, the global batch splits over the processes and micro-batches, a synthetic set can fill one step."""
    from facezoo.errors import looks_like_local_path
    from facezoo.train.sampler import BatchPlan

    d = recipe.data
    BatchPlan.check_split(d.batch_size, recipe.train.grad_accum, world_size)
    if d.train == "synthetic":
        BatchPlan.check_fill(d.synthetic.identities * d.synthetic.images_per_identity, d.batch_size)

    train = recipe.data.train
    if train != "synthetic" and looks_like_local_path(train) and not Path(train).expanduser().exists():
        raise MissingPathError(
            f"data.train: {train}: no such file or folder (expected 'synthetic', a .rec file or "
            "a folder with train.rec, identity folders, a Hugging Face dataset folder or .parquet "
            "file, or a Hub id ORG/NAME)"
        )
    for target in recipe.eval.targets:
        if target != "synthetic" and not Path(target).expanduser().exists():
            raise MissingPathError(
                f"eval.targets: {target}: no such verification set (a .bin file, a Hugging Face "
                "pair dataset folder or .parquet file, a folder of them, or 'synthetic')"
            )


def build_eval_sets(recipe: Recipe, progress: bool = True) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (uint8 images (2P, 3, H, W), issame (P,))}`` for ``eval.targets``: ``synthetic`` (held-out
    identities of the built-in generator), ``.bin`` files, Hugging Face pair datasets, or folders of them."""
    from facezoo.data import load_bin, load_pairs_dataset, synthetic_pairs
    from facezoo.eval import find_verification_sets

    sets: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    for target in recipe.eval.targets:
        if target == "synthetic":
            s = recipe.data.synthetic
            sets["synthetic"] = synthetic_pairs(recipe.eval.synthetic_pairs, seed=s.seed, difficulty=s.difficulty)
            continue
        p = Path(target).expanduser()
        if not p.exists():
            raise MissingPathError(
                f"eval.targets: {target}: no such verification set (a .bin file, a Hugging Face "
                "pair dataset folder or .parquet file, a folder of them, or 'synthetic')"
            )
        if p.is_file() and p.suffix == ".bin":
            sets[p.stem] = load_bin(p, progress=progress)
        elif (
            p.is_dir()
            and not any((p / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json"))
            and not any(p.glob("*.parquet"))
        ):
            found = find_verification_sets(p)
            if not found:
                raise MissingPathError(f"eval.targets: {target}: no verification sets in this folder")
            for name, path in found.items():
                sets[name] = (
                    load_bin(path, progress=progress)
                    if path.suffix == ".bin"
                    else load_pairs_dataset(path, progress=progress)
                )
        else:
            sets[p.stem if p.is_file() else p.name] = load_pairs_dataset(p, progress=progress)
    for name, (images, issame) in sets.items():
        if images.shape[0] != 2 * len(issame):
            raise DataError(f"eval.targets: {name}: {images.shape[0]} images for {len(issame)} pairs")
    return sets
