"""Training sources with one interface: ``len(ds)``, ``ds[i] -> (image, int label)``, ``ds.num_classes``.

The image is ``transform(uint8 RGB tensor (3, H, W))``, or the tensor itself without a transform. Sources:
MXNet RecordIO (:class:`RecordIOFaces`), identity folders (:class:`ImageFolderFaces`), Hugging Face datasets
(:class:`HFFaces`, :class:`HFIterableFaces` for streaming) and :class:`facezoo.data.SyntheticFaces`.

Bad records raise :class:`DataError` naming the file and where. Training may pass ``on_error='skip'``: the
sample is replaced by the next readable one and every skip is counted and logged. The count lives in shared memory
(:class:`SkipCounter`), so ``ds.skipped`` in the main process includes what its DataLoader workers skipped.

Identity folders: a sub-folder with no image files is not a class (a warning gives their number); the same rule
holds for ``facezoo data info``, training and ``facezoo data convert``.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from collections import namedtuple
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from facezoo.data.collate import PooledSamples, batch_buffer
from facezoo.data.image import _sj_decode, _sj_header, cell_bytes, decode_rgb
from facezoo.data.recordio import (
    _HEADER,
    _LEN_MASK,
    MAGIC,
    RecordReader,
    read_index,
    read_property,
    resolve_rec_paths,
    unpack,
)
from facezoo.errors import ConfigError, DataError, MissingPathError, looks_like_local_path, require_path

__all__ = [
    "FaceDataset",
    "SkipCounter",
    "count_skipped",
    "restore_skipped",
    "RecordIOFaces",
    "ImageFolderFaces",
    "HFFaces",
    "HFIterableFaces",
    "create_face_source",
    "check_source_path",
    "IMAGE_EXTENSIONS",
    "is_identity_folders",
]

_logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
Transform = Optional[Callable[[torch.Tensor], Any]]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
_MAX_SKIP_TRIES = 64
_SCALAR = namedtuple("_SCALAR", ["flag", "label"])


class SkipCounter:
    """Samples skipped under ``on_error='skip'``, counted over the process and its DataLoader workers.

    One int64 slot per process in a shared-memory tensor (it travels to workers under fork and spawn alike): the main
    process writes slot 0, worker ``w`` slot ``1 + w % 64``, so each slot has one writer and needs no lock.
    :attr:`total` (read in the main process once the workers are done) is the sum; :meth:`restore` sets it, e.g. to
    the count a checkpoint carried over."""

    SLOTS = 64

    def __init__(self) -> None:
        self.counts = torch.zeros(self.SLOTS + 1, dtype=torch.int64).share_memory_()

    def add(self, n: int = 1) -> int:
        """Count ``n`` skips in this process's slot; returns that slot's count."""
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % self.SLOTS
        self.counts[slot] += n
        return int(self.counts[slot])

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def restore(self, total: int) -> None:
        """Start again from ``total`` skips (kept in the main process's slot)."""
        self.counts.zero_()
        self.counts[0] = int(total)


def count_skipped(source: Any) -> int:
    """Samples ``source`` skipped so far in this process and its DataLoader workers (0 for a source that never
    skips, e.g. synthetic or in-memory faces)."""
    counter = getattr(source, "skip_counter", None)
    return counter.total if isinstance(counter, SkipCounter) else 0


def restore_skipped(source: Any, total: int) -> None:
    """Set the skip count of ``source`` (a resumed run's count so far; a no-op for a source that never skips)."""
    counter = getattr(source, "skip_counter", None)
    if isinstance(counter, SkipCounter):
        counter.restore(total)


def _log_skip(counter: SkipCounter, what: str, exc: Exception) -> None:
    """Count one skip and log it (the first 10 of each process, then every 100th)."""
    n = counter.add()
    if n <= 10 or n % 100 == 0:
        _logger.warning("skipping unreadable %s (%s); %d skipped so far in process %d", what, exc, n, os.getpid())


def checked_num_classes(found: int, override: Optional[int], where: Any) -> int:
    """``override`` when given (it may exceed the classes found, never be below them), else ``found``."""
    if override is None:
        return int(found)
    if int(override) < int(found):
        raise ConfigError(f"{where}: num_classes={override} is below the {found} classes in the data")
    return int(override)


class FaceDataset(Dataset):
    """Base of the map-style sources: subclasses implement ``__len__``, ``load(i) -> (uint8 CHW, label)`` and set
    ``num_classes``; this class applies the transform and the ``on_error`` policy."""

    num_classes: int

    def __init__(self, transform: Transform = None, on_error: str = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.transform = transform
        self.on_error = on_error
        self.skip_counter = SkipCounter()

    @property
    def skipped(self) -> int:
        """Samples skipped so far, by this process and its DataLoader workers."""
        return self.skip_counter.total

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def _note_skip(self, index: int, exc: Exception) -> None:
        _log_skip(self.skip_counter, f"sample {index}", exc)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        index %= n
        try:
            image, label = self.load(index)
        except DataError as exc:
            if self.on_error == "raise":
                raise
            self._note_skip(index, exc)
            for step in range(1, min(_MAX_SKIP_TRIES, n)):
                j = (index + step) % n
                try:
                    image, label = self.load(j)
                    break
                except DataError as exc2:
                    self._note_skip(j, exc2)
            else:
                raise DataError(
                    f"{type(self).__name__}: {_MAX_SKIP_TRIES} unreadable samples in a row from index "
                    f"{index}; the source looks broken"
                ) from exc
        return (self.transform(image) if self.transform is not None else image), label

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, int]]:
        """A whole batch of samples (what the DataLoader's fetcher asks for); sources override it to read a batch
        with less per-item work. Same samples, errors and ``on_error`` behaviour as ``[self[i] for i in indices]``."""
        return [self[i] for i in indices]

    def _batch_indices(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"index {int(bad)} out of range for {type(self).__name__} of length {n}")
        return idx % n if n else idx


def _batch_of(image: torch.Tensor, n: int) -> Optional[torch.Tensor]:
    """A pooled (n, H, W, C) uint8 buffer for images laid out like ``image`` (the decoder's interleaved (C, H, W)
    view of H x W x C memory), or None when the image is laid out otherwise or no buffer is free."""
    c, h, w = image.shape
    if image.dtype != torch.uint8 or image.stride() != (1, w * c, c):
        return None
    return batch_buffer((n, h, w, c))


_PAGE = mmap.PAGESIZE
_WILLNEED = getattr(mmap, "MADV_WILLNEED", None) if hasattr(mmap.mmap, "madvise") else None


class RecordIOFaces(FaceDataset):
    """Face images from an MXNet RecordIO ``.rec`` (+ ``.idx`` beside it), as insightface packs MS1MV2/V3,
    Glint360K and WebFace4M/42M. ``path``: the ``.rec`` file or its folder.

    Handles split records, multi-float labels (the first is the class), the insightface header record at key 0
    (and files without it, e.g. shuffled for DALI), and the ``property`` file for ``num_classes``. Each process
    (DataLoader worker) opens its own file handle.
    """

    def __init__(
        self, path: PathLike, transform: Transform = None, on_error: str = "raise", num_classes: Optional[int] = None
    ) -> None:
        super().__init__(transform, on_error)
        self.rec_path, self.idx_path = resolve_rec_paths(path)
        self.reader = RecordReader(self.rec_path)
        keys, offsets = read_index(self.idx_path)
        if len(keys) == 0:
            raise DataError(f"{self.idx_path}: empty index")
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]
        self.header: Optional[tuple[int, int]] = None
        first = self._offset_of(0) if keys.min() == 0 else None
        if first is not None:
            where = f"{self.rec_path}: record key 0 at byte offset {first}"
            head, data = unpack(self.reader.read_at(first, 0), where=where)
            if head.flag >= 2 and len(data) == 0:
                self.header = (int(head.label[0]), int(head.label[1]))
        if self.header is not None:
            a = self.header[0]
            self.keys = np.arange(1, a, dtype=np.int64)
            pos = np.searchsorted(self._sorted_keys, self.keys)
            last = len(self._sorted_keys) - 1
            bad = (pos > last) | (self._sorted_keys[np.minimum(pos, last)] != self.keys)
            if bad.any():
                raise DataError(
                    f"{self.idx_path}: header record says images are keys 1..{a - 1}, but key "
                    f"{int(self.keys[bad][0])} is not in the index ({int(bad.sum())} missing)"
                )
            self.offsets = self._sorted_offsets[pos]
        else:
            self.keys, self.offsets = keys, offsets
        # bytes from each image record to the next record in the file: one read per plain record
        starts = np.unique(self._sorted_offsets)
        ends = np.append(starts[1:], self.reader.size)
        pos = np.clip(np.searchsorted(starts, self.offsets), 0, len(starts) - 1)
        self.spans = np.clip(ends[pos] - self.offsets, 0, 1 << 24)
        prop = read_property(self.rec_path.parent)
        if num_classes is not None:
            self._num_classes: Optional[int] = int(num_classes)
        elif prop is not None:
            self._num_classes = prop[0]
        elif self.header is not None and self.header[1] > self.header[0]:
            self._num_classes = self.header[1] - self.header[0]
        else:
            self._num_classes = None  # found by scanning the labels on first use

    def _offset_of(self, key: int) -> Optional[int]:
        i = int(np.searchsorted(self._sorted_keys, key))
        if i < len(self._sorted_keys) and self._sorted_keys[i] == key:
            return int(self._sorted_offsets[i])
        return None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        if self._num_classes is None:
            labels = self.labels()
            self._num_classes = int(labels.max()) + 1 if len(labels) else 0
        return self._num_classes

    def _where(self, i: int) -> str:
        return f"{self.rec_path}: record key {int(self.keys[i])} at byte offset {int(self.offsets[i])}"

    def _read(self, i: int) -> tuple[Any, Union[bytes, memoryview]]:
        key, off = int(self.keys[i]), int(self.offsets[i])
        payload = self.reader.read_at(off, key, int(self.spans[i]))
        if len(payload) >= 24 and payload[0] == 0 and payload[1] == 0 and payload[2] == 0 and payload[3] == 0:
            # fast path: scalar label (flag 0), the common case
            return _SCALAR(0, struct.unpack_from("<f", payload, 4)[0]), payload[24:]
        return unpack(payload, where=self._where(i))

    def __getitems__(self, indices: Sequence[int]) -> Sequence[tuple[Any, int]]:
        """A batch in one pass (what the DataLoader's fetcher asks for). Without a transform, the batch's plain
        JPEG records are checked together (record and image headers, read through the file's memory map as one
        array), their pages requested at once (``madvise(WILLNEED)``, so a cold batch's reads are all in
        flight together), and each image is decoded straight into a pooled batch buffer
        (:func:`facezoo.data.collate.batch_buffer`); when every sample is there, the result is a
        :class:`facezoo.data.collate.PooledSamples` that :func:`facezoo.data.collate_faces` returns whole.
        Every other record (split, multi-float label, PNG, another size, malformed) goes through ``self[i]``, so
        its sample, error and ``on_error`` handling are those of single items; decoded images of the batch's size
        are copied into the buffer too."""
        idx = self._batch_indices(indices)
        n = len(idx)
        out: list[Any] = [None] * n
        lent: Optional[torch.Tensor] = None  # the pooled (n, H, W, 3) buffer, as the tensor collate_faces takes
        in_batch: list[int] = []
        words = self.reader.words() if self.transform is None and _sj_decode is not None and n else None
        if words is not None:
            lent, in_batch = self._decode_plain_jpegs(idx, words, out)
        chw = tuple(lent.permute(0, 3, 1, 2).shape[1:]) if lent is not None else None
        for k in range(n):
            if out[k] is not None:
                continue
            sample = out[k] = self[int(idx[k])]
            image = sample[0]
            if self.transform is not None or not isinstance(image, torch.Tensor):
                continue
            if lent is None and k == 0:
                lent = _batch_of(image, n)
                chw = tuple(image.shape) if lent is not None else None
            if lent is not None and tuple(image.shape) == chw and image.dtype == torch.uint8:
                lent[k] = image.permute(1, 2, 0)  # decoded on the item path (PNG, ...): one copy
                out[k] = sample[1]
                in_batch.append(k)
        if n and len(in_batch) == n:
            return PooledSamples(lent, out)  # samples made on access; collate_faces takes the buffer whole
        if in_batch:
            views = lent.permute(0, 3, 1, 2).unbind(0)
            for k in in_batch:
                out[k] = (views[k], out[k])
        return out

    def _decode_plain_jpegs(
        self, idx: np.ndarray, words: np.ndarray, out: list
    ) -> tuple[Optional[torch.Tensor], list[int]]:
        """Decode the plain JPEG records of a batch into a pooled buffer; set ``out[k]`` to the label of each image
        decoded there and return (buffer, those k). ``words``: the file as little-endian uint32 (records start
        4-byte aligned: magic, lrec, then the IRHeader's flag and float label, 16 more header bytes, the image)."""
        size = self.reader.size
        offs, spans = self.offsets[idx], self.spans[idx]
        ok = (offs >= 0) & (offs % 4 == 0) & (offs + 40 <= size)
        at = np.where(ok, offs // 4, 0)
        lrec = words[at + 1]
        ends = 8 + (lrec & _LEN_MASK).astype(np.int64)  # end of the payload, from the record's start
        ok &= (
            (words[at] == MAGIC)
            & (lrec >> 29 == 0)
            & (words[at + 2] == 0)
            & (ends > 36)
            & (ends <= np.minimum(spans, size - offs))
            & ((words[at + 8] & 0xFFFF) == 0xD8FF)
        )  # JPEG SOI
        plain = np.flatnonzero(ok)
        if not len(plain):
            return None, []
        mm = self.reader.mapping()
        if _WILLNEED is not None:  # not on Windows
            for off, end in zip(offs[plain].tolist(), ends[plain].tolist()):
                start = off & ~(_PAGE - 1)
                mm.madvise(_WILLNEED, start, off + end - start)
        labels = words[at[plain] + 3].view("<f4").tolist()
        view = memoryview(mm)
        starts, ends = (offs[plain] + 32).tolist(), (offs[plain] + ends[plain]).tolist()
        try:
            h, w = _sj_header(view[starts[0] : ends[0]])[:2]
        except ValueError:
            return None, []  # the item path reports it
        lent = batch_buffer((len(idx), h, w, 3))
        if lent is None:
            return None, []
        step = h * w * 3
        memory = memoryview(lent.numpy()).cast("B")
        in_batch = []
        for k, start, end, label in zip(plain.tolist(), starts, ends, labels):
            try:
                if _sj_decode(view[start:end], "rgb", buffer=memory[k * step : (k + 1) * step]).shape[:2] == (h, w):
                    out[k] = int(label)
                    in_batch.append(k)
            except ValueError:
                pass  # the item path decodes it (torchvision) or reports it
        return lent, in_batch

    def read_record(self, i: int) -> tuple[Any, bytes]:
        """Header and encoded image bytes of image ``i`` (no decoding)."""
        key, off = int(self.keys[i]), int(self.offsets[i])
        head, data = unpack(self.reader.read_at(off, key), where=self._where(i))
        return head, bytes(data)

    @staticmethod
    def _label(head: Any) -> int:
        lab = head.label if head.flag == 0 else head.label[0]
        return int(lab)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        head, data = self._read(i)
        return decode_rgb(data, where=self._where(i)), self._label(head)

    def label(self, i: int) -> int:
        """Label of image ``i``, reading only its header."""
        off = int(self.offsets[i])
        head = self.reader._pread(8 + _HEADER.size, off)
        plain = (
            len(head) == 8 + _HEADER.size
            and int.from_bytes(head[:4], "little") == MAGIC
            and (int.from_bytes(head[4:8], "little") >> 29) == 0
        )
        if plain:
            flag, lab = _HEADER.unpack_from(head, 8)[:2]
            if flag == 0:
                return int(lab)
            more = self.reader._pread(4, off + 8 + _HEADER.size)
            if len(more) == 4:
                return int(np.frombuffer(more, "<f4")[0])
        return self._label(self.read_record(i)[0])

    def labels(self, progress: bool = True) -> np.ndarray:
        """All labels (int64), reading only record headers; used when neither ``property`` nor a header record
        gives ``num_classes``."""
        return np.fromiter(
            (
                self.label(i)
                for i in tqdm(
                    range(len(self)),
                    desc=f"scan labels {self.rec_path.name}",
                    disable=not progress or len(self) < 10000,
                )
            ),
            dtype=np.int64,
            count=len(self),
        )


def identity_folders(
    root: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """``(classes, samples, empty)`` of a folder of identity folders: the sorted names of the sub-folders that hold
    image files (by extension; they are the classes 0..C-1), ``(relative path, label)`` of every image, and the
    sub-folders with no image file, which are not classes. :class:`ImageFolderFaces`, ``facezoo data info`` and
    ``facezoo data convert`` all list folders with this one rule, so they agree on the labels."""
    exts = tuple(e.lower() for e in extensions)
    classes: list[str] = []
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for c in sorted(e.name for e in os.scandir(root) if e.is_dir()):
        files = sorted(e.name for e in os.scandir(root / c) if e.is_file() and e.name.lower().endswith(exts))
        if not files:
            empty.append(c)
            continue
        samples.extend((os.path.join(c, f), len(classes)) for f in files)
        classes.append(c)
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        _logger.warning(
            "%s: %d sub-folder(s) hold no image files (%s) and are not classes: %d classes",
            root,
            len(empty),
            shown,
            len(classes),
        )
    return classes, samples, empty


def is_identity_folders(path: Any) -> bool:
    """True when ``path`` is a folder that :func:`create_face_source` opens as identity folders (sub-folders, no
    ``.rec``, no Hugging Face dataset or data files)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path).expanduser()
    if not p.is_dir() or p.suffix == ".rec" or (p / "train.rec").exists() or any(p.glob("*.rec")):
        return False
    if any((p / n).exists() for n in ("state.json", "dataset_dict.json")):
        return False
    entries = list(os.scandir(p))
    data_files = [e for e in entries if e.is_file() and e.name.endswith(_HF_DATA_SUFFIXES)]
    return not data_files and any(e.is_dir() and e.name != "data" for e in entries) and not (p / "data").is_dir()


class ImageFolderFaces(FaceDataset):
    """Aligned faces in ``path/<identity>/*.jpg``; identities are sorted folder names -> labels 0..C-1.

    A sub-folder with no image files is not a class (counted in ``empty_folders`` and logged). ``num_classes`` may
    raise the class count above the folders found (e.g. to share a classifier with more identities); it cannot
    lower it."""

    def __init__(
        self,
        path: PathLike,
        transform: Transform = None,
        on_error: str = "raise",
        num_classes: Optional[int] = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__(transform, on_error)
        self.root = require_path(path, "folder of identity folders", kind="dir")
        self.classes, self.samples, self.empty_folders = identity_folders(self.root, extensions)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        if not self.samples:
            raise DataError(
                f"{self.root}: no images ({', '.join(extensions)}) in identity sub-folders "
                f"({len(self.empty_folders)} sub-folders found); expected {self.root}/<identity>/<image>.jpg"
            )
        self.num_classes = checked_num_classes(len(self.classes), num_classes, self.root)
        self.targets = [s[1] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        rel, label = self.samples[i]
        path = self.root / rel
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read image: {exc}") from exc
        return decode_rgb(data, where=str(path)), label


# ------------------------------------------------------------------------------------------ Hugging Face

#: files a folder holds when it is a Hugging Face dataset of data files (not identity folders)
_HF_DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".json", ".jsonl")
_LABEL_NAMES = ("label", "labels", "identity", "id", "class", "person", "target")


def _load_hf(path: Any, split: Optional[str], streaming: bool) -> Any:
    """A ``datasets`` dataset from a loaded one, a ``save_to_disk`` folder, a data file, a folder of data files or a
    Hub id. A local path that does not exist is reported at once; a Hub id is checked for reachability first, so
    an offline machine fails in seconds with a message saying so."""
    import datasets

    if isinstance(
        path, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict, datasets.IterableDatasetDict)
    ):
        ds = path
    else:
        p = Path(path).expanduser()
        if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if streaming:
                ds = (
                    ds.to_iterable_dataset()
                    if isinstance(ds, datasets.Dataset)
                    else datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in ds.items()})
                )
        elif p.is_file() and p.suffix in (".parquet", ".arrow"):
            ds = datasets.load_dataset(p.suffix[1:], data_files=str(p), streaming=streaming)
        elif p.is_dir():
            if not any(p.iterdir()):
                raise DataError(
                    f"{p}: the folder is empty (expected a Hugging Face dataset, a .rec, or identity folders of images)"
                )
            ds = datasets.load_dataset(str(p), streaming=streaming)
        elif p.exists():
            raise DataError(
                f"{path}: not a dataset file (expected a .rec with its .idx, a .parquet or .arrow file, a "
                "folder of identity folders or a Hugging Face dataset folder)"
            )
        elif looks_like_local_path(path):
            raise MissingPathError(
                f"{path}: no such file or folder (expected a dataset: a .rec, a folder of identity "
                "folders, a Hugging Face dataset folder or .parquet file, or a Hub id ORG/NAME)"
            )
        else:
            ds = _load_hub_dataset(str(path), streaming)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        name = split or ("train" if "train" in ds else (next(iter(ds)) if len(ds) == 1 else None))
        if name is None or name not in ds:
            raise ConfigError(f"{path}: choose a split with split=; available: {list(ds)}")
        ds = ds[name]
    return ds


def _load_hub_dataset(repo_id: str, streaming: bool) -> Any:
    """``datasets.load_dataset(repo_id)`` after a quick reachability check, so that no network fails in seconds
    (``datasets`` itself retries for about half a minute) and an offline cache miss says what it is."""
    import datasets

    from facezoo.models.factory import check_hub_reachable, hub_offline, offline_cache_miss

    check_hub_reachable(repo_id, repo_type="dataset")
    try:
        return datasets.load_dataset(repo_id, streaming=streaming)
    except (ConnectionError, FileNotFoundError) as exc:  # datasets' offline errors derive from these
        if hub_offline():
            raise offline_cache_miss(repo_id, "dataset") from None
        raise DataError(
            f"{repo_id}: cannot load this Hugging Face dataset ({' '.join(str(exc).split())[:200]})"
        ) from None


def _columns(ds: Any, image_column: Optional[str], label_column: Optional[str], source: Any) -> tuple[str, str]:
    import datasets

    feats = ds.features
    if feats is None:
        raise DataError(f"{source}: the dataset has no feature schema; pass image_column= and label_column=")
    if image_column is None:
        imgs = [k for k, v in feats.items() if isinstance(v, datasets.Image)]
        if not imgs:
            raise DataError(
                f"{source}: no Image column among {list(feats)} (expected a face dataset: an Image column "
                "and a label column; pass image_column= to name one)"
            )
        image_column = imgs[0]
    if label_column is None:
        cls = [k for k, v in feats.items() if isinstance(v, datasets.ClassLabel)]
        named = [k for k in _LABEL_NAMES if k in feats]
        if not cls and not named:
            raise DataError(
                f"{source}: no label column (ClassLabel or one of {list(_LABEL_NAMES)}) among "
                f"{list(feats)}; pass label_column="
            )
        label_column = cls[0] if cls else named[0]
    for c in (image_column, label_column):
        if c not in feats:
            raise DataError(f"{source}: no column {c!r}; columns are {list(feats)}")
    return image_column, label_column


def _cell_image(cell: Any, where: str) -> torch.Tensor:
    return decode_rgb(cell_bytes(cell, where), where=where)


def _cell_label(value: Any, where: str) -> int:
    if value is None:
        raise DataError(f"{where}: missing label")
    if isinstance(value, (list, tuple, np.ndarray)):
        value = value[0]
    return int(value)


class HFFaces(FaceDataset):
    """A Hugging Face dataset with an image column and a label column, as a map-style training source.

    ``path``: a ``datasets.Dataset``, a ``save_to_disk`` folder, a ``.parquet``/``.arrow`` file, a folder of data
    files, or a Hub id. Columns are detected (first ``Image`` feature; first ``ClassLabel`` or a column named
    ``label``/``identity``/...) unless given. Images are decoded from their stored bytes (no PIL round trip).
    """

    def __init__(
        self,
        path: Any,
        split: Optional[str] = None,
        transform: Transform = None,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        on_error: str = "raise",
        num_classes: Optional[int] = None,
    ) -> None:
        import datasets
        import pyarrow.compute as pc

        super().__init__(transform, on_error)
        ds = _load_hf(path, split, streaming=False)
        if not isinstance(ds, datasets.Dataset):
            raise ConfigError(f"{path}: streamed datasets are iterable-only; use HFIterableFaces")
        self.source = str(path) if not isinstance(path, datasets.Dataset) else (ds.info.dataset_name or "dataset")
        self.image_column, self.label_column = _columns(ds, image_column, label_column, self.source)
        feat = ds.features[self.label_column]
        if isinstance(feat, datasets.ClassLabel) and num_classes is None:
            self.num_classes = feat.num_classes
        else:  # the labels present bound an override from below
            col = ds.data.column(self.label_column)
            found = int(pc.max(col).as_py()) + 1 if len(col) else 0
            self.num_classes = checked_num_classes(found, num_classes, self.source)
        self.ds = ds.cast_column(self.image_column, datasets.Image(decode=False)).select_columns(
            [self.image_column, self.label_column]
        )

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.ds[int(i)]
        where = f"{self.source}: row {i} column {self.image_column}"
        label = _cell_label(row[self.label_column], f"{self.source}: row {i}")
        return _cell_image(row[self.image_column], where), label

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, int]]:
        """A batch with one Arrow ``take`` instead of one row lookup per sample; rows that fail go through
        ``self[i]`` (full error context, ``on_error``)."""
        idx = self._batch_indices(indices).tolist()
        cols = self.ds[idx]
        tf, out = self.transform, []
        for i, cell, value in zip(idx, cols[self.image_column], cols[self.label_column]):
            try:
                image, label = _cell_image(cell, "<row>"), _cell_label(value, "<row>")
            except (DataError, TypeError, ValueError):
                out.append(self[i])
                continue
            out.append((tf(image) if tf is not None else image, label))
        return out


class HFIterableFaces(IterableDataset):
    """A streamed (or iterable) Hugging Face dataset as a training source: yields ``(image, int label)``.

    DataLoader workers each read their own shards (``datasets`` splits shards by worker). ``num_classes`` comes
    from a ``ClassLabel`` feature or must be given. ``on_error='skip'`` skips and counts unreadable rows.
    """

    def __init__(
        self,
        path: Any,
        split: Optional[str] = None,
        transform: Transform = None,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        on_error: str = "raise",
        num_classes: Optional[int] = None,
    ) -> None:
        import datasets

        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        ds = _load_hf(path, split, streaming=True)
        if isinstance(ds, datasets.Dataset):
            ds = ds.to_iterable_dataset()
        self.source = str(path)
        self.image_column, self.label_column = _columns(ds, image_column, label_column, self.source)
        feat = ds.features[self.label_column]
        if num_classes is not None:  # a stream cannot be checked ahead; training checks every batch's labels
            self.num_classes = int(num_classes)
        elif isinstance(feat, datasets.ClassLabel):
            self.num_classes = feat.num_classes
        else:
            raise ConfigError(
                f"{path}: label column {self.label_column!r} is not a ClassLabel, so a streamed "
                "dataset cannot know num_classes without reading it all; pass num_classes="
            )
        self.ds = ds.cast_column(self.image_column, datasets.Image(decode=False)).select_columns(
            [self.image_column, self.label_column]
        )
        self.transform = transform
        self.on_error = on_error
        self.skip_counter = SkipCounter()

    @property
    def skipped(self) -> int:
        """Rows skipped so far, by this process and its DataLoader workers."""
        return self.skip_counter.total

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to ``datasets`` so shuffling changes per epoch."""
        self.ds.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        for i, row in enumerate(self.ds):
            try:
                image = _cell_image(row[self.image_column], f"{self.source}: streamed row {i}")
                label = _cell_label(row[self.label_column], f"{self.source}: streamed row {i}")
            except DataError as exc:
                if self.on_error == "raise":
                    raise
                _log_skip(self.skip_counter, f"row {i}", exc)
                continue
            yield (self.transform(image) if self.transform is not None else image), label


def check_source_path(path: Any) -> None:
    """Raise :class:`MissingPathError` at once when ``path`` reads as a local path (``faces_emore``, ``./data``,
    ``/data/x.rec``: anything but ``ORG/NAME``) and does not exist, so that it is never looked up on the Hub."""
    if (
        isinstance(path, (str, os.PathLike))
        and path != "synthetic"
        and not Path(path).expanduser().exists()
        and looks_like_local_path(path)
    ):
        raise MissingPathError(
            f"{path}: no such file or folder (expected a training set: a .rec file or a folder "
            "with train.rec, a folder of identity folders, a Hugging Face dataset folder or "
            ".parquet file, a Hub id ORG/NAME, or 'synthetic')"
        )


def create_face_source(
    path: Any, transform: Transform = None, on_error: str = "raise", streaming: bool = False, **kwargs: Any
) -> Union[FaceDataset, HFIterableFaces]:
    """Open any training source by what it is: ``'synthetic'``, a ``.rec`` file or folder with one, a folder of
    identity folders, a Hugging Face dataset (folder, parquet file, Hub id; ``streaming=True`` for iterable).

    A local path that does not exist (``faces_emore``, ``./data``, ``/data/x.rec``) is reported at once, never
    looked up on the Hub; ``ORG/NAME`` that is not a local folder is a Hub id."""
    if isinstance(path, str) and path == "synthetic":
        from facezoo.data.synthetic import SyntheticFaces

        return SyntheticFaces(transform=transform, **kwargs)
    check_source_path(path)
    p = Path(path).expanduser() if isinstance(path, (str, os.PathLike)) else None
    if p is not None and (p.suffix == ".rec" or (p.is_dir() and ((p / "train.rec").exists() or any(p.glob("*.rec"))))):
        return RecordIOFaces(p, transform=transform, on_error=on_error, **kwargs)
    if is_identity_folders(p):
        return ImageFolderFaces(p, transform=transform, on_error=on_error, **kwargs)
    if streaming:
        return HFIterableFaces(path, transform=transform, on_error=on_error, **kwargs)
    return HFFaces(path, transform=transform, on_error=on_error, **kwargs)
