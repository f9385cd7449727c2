"""``collate_faces``: a DataLoader ``collate_fn`` for face batches that reuses its batch memory.

PyTorch's ``default_collate`` allocates a fresh batch tensor for every batch (in a worker: a fresh shared-memory
segment), and stacks images into channel-first memory. For 256 uint8 112x112 faces that is 9.6 MB per batch whose
pages the kernel must map and zero (~2.5 ms per batch in the main process, ~20 ms in a worker) plus a strided
transpose of every image (JPEG decoders write pixels interleaved, channels last): together comparable to decoding.

``collate_faces`` instead

* keeps a small per-process pool of batch buffers and lends them out. A buffer goes back to the pool only when
  the batch handed to the caller, and every view of it, is gone: the caller's tensor holds the buffer through a
  numpy array whose finalizer returns it (in a worker the pool lives in shared memory and the finalizer runs in
  the main process). Nothing is overwritten while anyone can still see it; when every buffer is out, batches get
  fresh memory, as with ``default_collate``;
* sends a worker buffer's shared memory to the main process once; the main process keeps it mapped and later
  batches in that buffer travel as a small key (no file descriptor passed, no new mapping, no page faults per
  batch). The main process lets go of a worker's buffers when a buffer of a newer worker arrives after that
  worker has exited (so after the last epoch they stay mapped until the process ends or the next loader starts);
* keeps the images' memory layout: decoded faces are ``(3, H, W)`` views of channels-last memory, so the batch is a
  ``(B, 3, H, W)`` tensor in ``torch.channels_last`` memory format (what GPU convolutions prefer; ``.contiguous()``
  gives channel-first memory). Images in channel-first memory give a contiguous batch;
* takes batches that a source decoded straight into a pooled buffer (:func:`batch_buffer` wrapped in
  :class:`PooledSamples`, as ``RecordIOFaces.__getitems__`` returns them when it has no transform) without
  copying them at all.

Samples that are not ``(tensor, int label)`` pairs are passed to ``default_collate``.

    loader = DataLoader(RecordIOFaces("faces_emore"), batch_size=256, shuffle=True, num_workers=8,
                        collate_fn=collate_faces)
"""

from __future__ import annotations

import operator
import os
import weakref
from collections.abc import Sequence as SequenceABC
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

__all__ = ["collate_faces", "batch_buffer", "PooledSamples"]

_SLOTS = 6  # buffers per batch shape and process (prefetched batches + the ones the caller holds)
_SHAPES = 4  # batch shapes pooled per process (the full batch, a last partial one, ...)
_FREE, _LENT, _SENT = 0, 1, 2  # slot states: in the pool / lent in this process / handed to the main process


def _release_local(flag: torch.Tensor) -> None:
    if int(flag[0]) == _LENT:  # not if a worker handed it on to the main process meanwhile
        flag[0] = _FREE


def _release_remote(flag: torch.Tensor) -> None:
    flag[0] = _FREE


def _flag_of(buffer: torch.Tensor) -> torch.Tensor:
    """The one-byte state kept right after a pooled buffer's data, in the same storage (so a batch sent from a
    worker carries its own return ticket: one shared-memory handle per batch)."""
    nbytes = buffer.numel() * buffer.element_size()
    return torch.empty(0, dtype=torch.uint8).set_(buffer.untyped_storage(), nbytes, (1,))


def _lend(buffer: torch.Tensor, flag: torch.Tensor, release=_release_local) -> torch.Tensor:
    """A tensor over ``buffer`` whose storage returns the buffer to its pool when the last view of it dies."""
    arr = buffer.numpy()
    weakref.finalize(arr, release, flag)
    return torch.from_numpy(arr)


class _Slot:
    """One pooled batch buffer, its state byte, and (in a worker) whether the main process has its memory yet."""

    __slots__ = ("buffer", "flag", "token", "key", "sent")

    def __init__(self, buffer: torch.Tensor, token: tuple[int, int], key: int) -> None:
        self.buffer, self.flag, self.token, self.key, self.sent = buffer, _flag_of(buffer), token, key, False


# Main process: the worker buffers it has mapped, by (worker pool token, slot key). A worker sends each buffer's
# shared memory once; later batches in it travel as the key alone (no file-descriptor passing, no new mapping and
# no page faults per batch). Entries of workers that have exited are dropped when a new worker's buffer arrives.
_REMOTE: dict[tuple[tuple[int, int], int], _Slot] = {}
_REMOTE_PID = os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _rebuild(
    token: tuple[int, int], key: int, buffer: Optional[torch.Tensor], labels: np.ndarray, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpickled in the main process: the worker's shared buffer (sent whole the first time, by key after), lent
    until the batch is dropped here."""
    global _REMOTE, _REMOTE_PID
    if _REMOTE_PID != os.getpid():  # a forked child does not own its parent's view of the workers
        _REMOTE, _REMOTE_PID = {}, os.getpid()
    if buffer is not None:
        for tok, k in [e for e in _REMOTE if e[0] != token and not _alive(e[0][0])]:
            del _REMOTE[(tok, k)]
        slot = _REMOTE[(token, key)] = _Slot(buffer, token, key)
    else:
        slot = _REMOTE.get((token, key))
        if slot is None:
            raise RuntimeError(
                f"collate_faces: a batch from DataLoader worker pid {token[0]} refers to its buffer "
                f"{key}, whose memory never reached this process (was the batch unpickled in another "
                "process than the one that received the worker's first batches?)"
            )
    images = _lend(slot.buffer, slot.flag, _release_remote)
    return (images.permute(0, 3, 1, 2) if channels_last else images), torch.from_numpy(labels)


class _SharedBatch(tuple):
    """``(images, labels)`` built in a worker in a pooled shared-memory buffer. Pickled to the main process, it
    becomes a plain tuple whose image tensor gives the buffer back when dropped; the labels travel inline, the
    buffer's memory only the first time (``parts``: slot, labels, channels_last)."""

    def __reduce__(self) -> tuple:
        slot, labels, channels_last = self.parts
        first = not slot.sent
        slot.sent = True  # pickled in order by the worker queue's one feeder thread
        return _rebuild, (slot.token, slot.key, slot.buffer if first else None, labels, channels_last)


class _Pool:
    def __init__(self, shared: bool) -> None:
        self.pid = os.getpid()
        self.shared = shared
        self.token = (self.pid, int.from_bytes(os.urandom(8), "little"))
        self.slots: dict[tuple, list[_Slot]] = {}
        self.made = 0

    def _new(self, shape: Sequence[int], dtype: torch.dtype) -> _Slot:
        nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        storage = torch.UntypedStorage._new_shared(nbytes + 1) if self.shared else torch.UntypedStorage(nbytes + 1)
        self.made += 1
        return _Slot(torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape)), self.token, self.made)

    def take(self, shape: tuple, dtype: torch.dtype) -> Optional[_Slot]:
        """A free slot of this shape (its state byte marked lent), or None when all are out."""
        key = (shape, dtype)
        slots = self.slots.get(key)
        if slots is None:
            if len(self.slots) >= _SHAPES:  # forget a shape none of whose buffers is out, if there is one
                idle = next((k for k, v in self.slots.items() if all(int(x.flag[0]) == _FREE for x in v)), None)
                if idle is None:
                    return None
                del self.slots[idle]
            slots = self.slots[key] = []
        for slot in slots:
            if int(slot.flag[0]) == _FREE:
                slot.flag[0] = _LENT
                return slot
        if len(slots) < _SLOTS:
            slot = self._new(shape, dtype)
            slot.flag[0] = _LENT
            slots.append(slot)
            return slot
        return None


_POOL: Optional[_Pool] = None


def _pool(shared: bool) -> _Pool:
    global _POOL
    if _POOL is None or _POOL.pid != os.getpid() or _POOL.shared != shared:  # a forked child starts its own
        _POOL = _Pool(shared)
    return _POOL


def batch_buffer(shape: Sequence[int], dtype: torch.dtype = torch.uint8) -> Optional[torch.Tensor]:
    """A pooled buffer of ``shape`` = ``(B, H, W, C)`` for a source to decode a batch straight into, or None when
    every pooled buffer is in use. Return it wrapped in :class:`PooledSamples`; :func:`collate_faces` then hands
    the whole buffer out as the batch without copying. It goes back to the pool when nothing uses it."""
    slot = _pool(shared=get_worker_info() is not None).take(tuple(int(s) for s in shape), dtype)
    if slot is None:
        return None
    lent = _lend(slot.buffer, slot.flag)
    lent._facezoo_slot = slot  # collate_faces takes it as a whole once (and clears this)
    return lent


class PooledSamples(SequenceABC):
    """The ``(image (C, H, W), label)`` samples of a batch whose images fill a :func:`batch_buffer` ``(B, H, W, C)``
    in order: what ``RecordIOFaces.__getitems__`` returns. Samples are made on access (views of the buffer), so
    any ``collate_fn`` works; :func:`collate_faces` takes the buffer whole, without looking at each sample."""

    def __init__(self, buffer: torch.Tensor, labels: Sequence[int]) -> None:
        if buffer.dim() != 4 or buffer.shape[0] != len(labels):
            raise ValueError(f"PooledSamples: buffer {tuple(buffer.shape)} does not hold {len(labels)} images")
        self.buffer, self.labels = buffer, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return self.buffer[k].permute(2, 0, 1), self.labels[k]


def _collate_pooled(batch: PooledSamples, in_worker: bool) -> Optional[tuple]:
    """The batch as the buffer it was decoded into (no copy), or None if that buffer was already handed out."""
    slot = getattr(batch.buffer, "_facezoo_slot", None)
    if slot is None:
        return None
    del batch.buffer._facezoo_slot
    labels = np.asarray(batch.labels, dtype=np.int64)
    if in_worker:
        slot.flag[0] = _SENT
        out = _SharedBatch((batch.buffer.permute(0, 3, 1, 2), torch.from_numpy(labels)))
        out.parts = (slot, labels, True)
        return out
    return batch.buffer.permute(0, 3, 1, 2), torch.from_numpy(labels)


def collate_faces(batch: Sequence[Any]) -> Any:
    """Collate ``(image tensor, int label)`` samples into ``(images (B, *image.shape), labels int64 (B,))``.

    A drop-in ``collate_fn`` for face sources (uint8 ``(3, H, W)`` images, or whatever tensor a transform returns),
    faster than ``default_collate``: batch memory is reused and images keep their memory layout (decoded images
    give a ``torch.channels_last`` batch; see the module docs). Batches are ordinary CPU tensors except that their
    storage cannot be resized in place. Other sample forms go to ``default_collate``."""
    in_worker = get_worker_info() is not None
    if type(batch) is PooledSamples:
        whole = _collate_pooled(batch, in_worker)
        if whole is not None:
            return whole
    if not batch:
        return default_collate(batch)
    first = batch[0]
    if not (
        isinstance(first, (tuple, list))
        and len(first) == 2
        and isinstance(first[0], torch.Tensor)
        and not first[0].requires_grad
        and first[0].device.type == "cpu"
    ):
        return default_collate(batch)
    try:
        images, labels = zip(*batch)
        labels_np = np.fromiter((operator.index(v) for v in labels), dtype=np.int64, count=len(labels))
    except (TypeError, ValueError):  # labels that are not integers (floats, strings, multi-label tensors)
        return default_collate(batch)
    im = first[0]
    channels_last = (
        im.dim() == 3
        and im.shape[0] > 1
        and im.stride(0) == 1
        and im.stride(2) == im.shape[0]
        and im.stride(1) == im.shape[0] * im.shape[2]
    )
    shape = (len(images),) + ((im.shape[1], im.shape[2], im.shape[0]) if channels_last else tuple(im.shape))
    slot = _pool(shared=in_worker).take(shape, im.dtype)
    if slot is None:  # every pooled buffer is still in use: fresh memory, as default_collate would
        return default_collate(batch)
    try:
        torch.stack([x.permute(1, 2, 0) for x in images] if channels_last else images, 0, out=slot.buffer)
    except Exception:
        slot.flag[0] = _FREE
        raise
    if in_worker:
        slot.flag[0] = _SENT
        buffer = slot.buffer
        out = _SharedBatch((buffer.permute(0, 3, 1, 2) if channels_last else buffer, torch.from_numpy(labels_np)))
        out.parts = (slot, labels_np, channels_last)
        return out
    whole = _lend(slot.buffer, slot.flag)
    return (whole.permute(0, 3, 1, 2) if channels_last else whole), torch.from_numpy(labels_np)
