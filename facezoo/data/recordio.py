"""MXNet RecordIO (``.rec`` + ``.idx``), read and written without mxnet.

Format (dmlc-core ``recordio.cc`` / ``mxnet.recordio``): each record is ``uint32 magic 0xced7230a``, ``uint32 lrec``
(length = ``lrec & (2**29 - 1)``, cflag = ``lrec >> 29``), the payload, and zero padding to 4 bytes. A payload that
contains the magic at a 4-byte aligned position is split there into parts with cflag 1 (first), 2 (middle), 3
(last); the reader puts the magic back between parts. The ``.idx`` file has lines ``key\\toffset``.

An image payload starts with the ``IRHeader`` struct ``'IfQQ'`` (flag, label, id, id2); if ``flag > 0``, ``flag``
float32 labels follow and ``label`` is 0; the rest is the encoded image. insightface's face datasets add a header
record at key 0 (no image, labels ``[a, b]``: images are keys ``1..a-1``, identity records ``a..b-1``).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Optional, Sequence, Union

import numpy as np

from facezoo.errors import DataError, MissingPathError

__all__ = [
    "MAGIC",
    "IRHeader",
    "pack",
    "unpack",
    "read_index",
    "RecordReader",
    "RecordWriter",
    "write_face_records",
    "write_property",
    "read_property",
    "resolve_rec_paths",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_HEADER = struct.Struct("<IfQQ")
_HAS_PREADV = hasattr(os, "preadv")
PathLike = Union[str, os.PathLike]


@dataclass
class IRHeader:
    """mxnet's image record header; ``label`` is a float or a float32 array (when ``flag > 0``)."""

    flag: int
    label: Union[float, np.ndarray]
    id: int = 0
    id2: int = 0


def pack(header: IRHeader, data: bytes = b"") -> bytes:
    """``mxnet.recordio.pack``: a scalar label goes in the header, an array label (any length) after it."""
    if np.isscalar(header.label):
        return _HEADER.pack(0, float(header.label), header.id, header.id2) + data
    label = np.asarray(header.label, dtype="<f4").ravel()
    return _HEADER.pack(label.size, 0.0, header.id, header.id2) + label.tobytes() + data


def unpack(payload: Union[bytes, memoryview], where: str = "<record>") -> tuple[IRHeader, Union[bytes, memoryview]]:
    """``mxnet.recordio.unpack``: split a payload into its header and the image bytes."""
    if len(payload) < _HEADER.size:
        raise DataError(f"{where}: payload of {len(payload)} bytes is shorter than the {_HEADER.size}-byte IRHeader")
    flag, label, id1, id2 = _HEADER.unpack_from(payload)
    pos = _HEADER.size
    if flag > 0:
        end = pos + 4 * flag
        if end > len(payload):
            raise DataError(f"{where}: header says {flag} float labels but the payload has {len(payload)} bytes")
        label = np.frombuffer(payload, dtype="<f4", count=flag, offset=pos).copy()
        pos = end
    return IRHeader(flag, label, id1, id2), payload[pos:]


def read_index(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.idx`` file into ``(keys, offsets)`` int64 arrays, in file order."""
    keys, offsets = [], []
    with open(path, encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected 'key<TAB>offset', got {line.rstrip()!r}")
            try:
                keys.append(int(parts[0]))
                offsets.append(int(parts[1]))
            except ValueError:
                raise DataError(f"{path}:{lineno}: key and offset must be integers, got {line.rstrip()!r}") from None
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def resolve_rec_paths(path: PathLike) -> tuple[Path, Path]:
    """``path`` is a ``.rec`` file or a folder holding ``train.rec``; the ``.idx`` sits beside the ``.rec``."""
    p = Path(path)
    if p.is_dir():
        recs = [p / "train.rec"] if (p / "train.rec").exists() else sorted(p.glob("*.rec"))
        if len(recs) != 1:
            raise MissingPathError(
                f"{p}: expected train.rec (or exactly one .rec file) in the folder, found {[r.name for r in recs]}"
            )
        p = recs[0]
    if not p.is_file():
        raise MissingPathError(f"{p}: no such RecordIO file (.rec)")
    idx = p.with_suffix(".idx")
    if not idx.is_file():
        raise MissingPathError(f"{idx}: index file not found beside {p.name} (needed for random access)")
    return p, idx


class RecordReader:
    """Random-access reader of one ``.rec`` file. Opens its file (and its memory map) lazily and again in each new
    process, so one instance can be shared with DataLoader workers (fork or spawn) without sharing a file offset."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        self._map: Optional[mmap.mmap] = None
        self._map_pid: Optional[int] = None
        self._words: Optional[np.ndarray] = None

    def _handle(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = pid
        return self._fd

    def mapping(self) -> Optional[mmap.mmap]:
        """This process's read-only memory map of the whole file (shared page cache, no copy per read), or None
        where the file cannot be mapped (empty, or a file system without mmap): callers then read with
        :meth:`read_into`. Random access through a map must say which pages it wants (``madvise(WILLNEED)``,
        as ``RecordIOFaces.__getitems__`` does for a batch) or pay one synchronous page fault at a time.
        The file must not shrink while mapped (reading a page past the new end kills the process with SIGBUS)."""
        pid = os.getpid()
        if self._map_pid != pid:
            self._map, self._map_pid, self._words = None, pid, None
            if self.size > 0:
                try:
                    self._map = mmap.mmap(self._handle(), self.size, access=mmap.ACCESS_READ)
                    if hasattr(mmap, "MADV_RANDOM") and hasattr(self._map, "madvise"):
                        self._map.madvise(mmap.MADV_RANDOM)  # no read-around of 128 KiB per 7 KiB face
                except (OSError, ValueError):
                    self._map = None
        return self._map

    def words(self) -> Optional[np.ndarray]:
        """The mapped file as little-endian uint32 words (records start 4-byte aligned), for reading many record
        headers with one numpy gather; None where the file cannot be mapped."""
        mm = self.mapping()
        if mm is not None and self._words is None:
            self._words = np.frombuffer(mm, dtype="<u4", count=self.size // 4)
        return self._words if mm is not None else None

    def _pread(self, n: int, offset: int) -> bytes:
        fd = self._handle()
        if hasattr(os, "pread"):
            return os.pread(fd, n, offset)
        os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
        return os.read(fd, n)

    def read_into(self, buf: memoryview, offset: int) -> int:
        """Read ``len(buf)`` bytes (fewer at the end of the file) at ``offset`` into a writable buffer; returns the
        count. Decoders can then use the bytes in place (a read-only ``bytes`` object would need a copy)."""
        fd = self._handle()
        if _HAS_PREADV:
            return os.preadv(fd, [buf], offset)
        data = self._pread(len(buf), offset)  # pragma: no cover - platforms without preadv
        buf[: len(data)] = data
        return len(data)

    def read_at(self, offset: int, key: Union[int, str] = "?", span: int = 0) -> Union[bytes, memoryview]:
        """Read the (possibly split) record starting at byte ``offset``; errors name file, key and offset.

        ``span`` (bytes up to the next record, from the index) lets a plain record come back from one read,
        as a zero-copy, writable memoryview."""
        if span >= 8 and 0 <= offset and offset + 8 <= self.size:
            buf = memoryview(bytearray(span))
            got = self.read_into(buf, offset)
            if got >= 8:
                magic, lrec = struct.unpack_from("<II", buf)
                length = lrec & _LEN_MASK
                if magic == MAGIC and lrec >> 29 == 0 and 8 + length <= got:
                    return buf[8 : 8 + length]
        where = f"{self.path}: record key {key} at byte offset {offset}"
        if offset < 0 or offset + 8 > self.size:
            raise DataError(f"{where}: offset is past the end of the file ({self.size} bytes)")
        parts = []
        pos = offset
        while True:
            head = self._pread(8, pos)
            if len(head) < 8:
                raise DataError(f"{where}: truncated record (part header at byte {pos} cut off at end of file)")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(
                    f"{where}: wrong magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x}); "
                    "the index does not point at a record or the file is corrupt"
                )
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag not in (0, 1, 2, 3) or (pos == offset) != (cflag in (0, 1)):
                raise DataError(f"{where}: unexpected split flag {cflag} at byte {pos}")
            data = self._pread(length, pos + 8) if length else b""
            if len(data) < length:
                raise DataError(
                    f"{where}: truncated record: needs {length} bytes at byte {pos + 8}, file ends at {self.size}"
                )
            parts.append(data)
            if cflag in (0, 3):
                break
            parts.append(_MAGIC_BYTES)
            pos += 8 + ((length + 3) & ~3)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        mine = os.getpid()
        self._words = None
        if self._map is not None and self._map_pid == mine:
            try:
                self._map.close()
            except BufferError:  # a decoded view still points into it; the map goes when that view does
                pass
        self._map, self._map_pid = None, None
        if self._fd is not None and self._pid == mine:
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"], state["_pid"], state["_map"], state["_map_pid"], state["_words"] = None, None, None, None, None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class RecordWriter:
    """Write ``.rec`` (+ ``.idx`` when given), the byte layout dmlc-core's ``RecordIOWriter`` produces."""

    def __init__(self, path: PathLike, idx_path: Optional[PathLike] = None) -> None:
        self.rec_path = Path(path)
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec: BinaryIO = open(self.rec_path, "wb")
        self._idx = open(idx_path, "w", encoding="ascii") if idx_path is not None else None
        self.split_records = 0

    def write(self, payload: bytes) -> int:
        """Append one record; returns its byte offset."""
        if len(payload) >= 1 << 29:
            raise ValueError(f"{self.rec_path}: RecordIO records must be < 2**29 bytes, got {len(payload)}")
        offset = self._rec.tell()
        n = len(payload)
        out = []
        start = 0
        lower = n & ~3
        pos = payload.find(_MAGIC_BYTES, 0, lower)
        while pos != -1:
            if pos % 4 == 0:  # dmlc only splits at 4-byte aligned occurrences
                out.append(struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << 29) | (pos - start)))
                out.append(payload[start:pos])
                start = pos + 4
                self.split_records += 1
                pos = payload.find(_MAGIC_BYTES, start, lower)
            else:
                pos = payload.find(_MAGIC_BYTES, pos + 1, lower)
        out.append(struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | (n - start)))
        out.append(payload[start:])
        out.append(b"\0" * (((n + 3) & ~3) - n))
        self._rec.write(b"".join(out))
        return offset

    def write_idx(self, key: int, payload: bytes) -> int:
        """Append a record and its ``key\\toffset`` index line (``MXIndexedRecordIO.write_idx``)."""
        if self._idx is None:
            raise ValueError("write_idx needs an index path")
        offset = self.write(payload)
        self._idx.write(f"{int(key)}\t{offset}\n")
        return offset

    def close(self) -> None:
        self._rec.close()
        if self._idx is not None:
            self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_property(path: PathLike, num_classes: int, size: tuple[int, int] = (112, 112)) -> None:
    """insightface's ``property`` file: ``num_classes,H,W``."""
    Path(path, "property").write_text(f"{int(num_classes)},{size[0]},{size[1]}\n")


def read_property(path: PathLike) -> Optional[tuple[int, int, int]]:
    """Parse ``path/property`` (``num_classes,H,W``) or return None when there is none."""
    p = Path(path, "property")
    if not p.is_file():
        return None
    text = p.read_text().strip()
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise DataError(f"{p}: expected 'num_classes,H,W', got {text!r}") from None
    if len(vals) not in (1, 3) or vals[0] <= 0:
        raise DataError(f"{p}: expected 'num_classes,H,W', got {text!r}")
    return (vals[0], vals[1], vals[2]) if len(vals) == 3 else (vals[0], 0, 0)


def write_face_records(
    path: PathLike,
    items: Iterable[tuple[bytes, Union[int, Sequence[float]]]],
    num_classes: Optional[int] = None,
    insightface_header: bool = True,
    image_size: tuple[int, int] = (112, 112),
) -> dict:
    """Write an insightface-style face ``.rec``/``.idx`` (+ ``property``) from ``(encoded_image, label)`` items.

    With ``insightface_header`` (the default, what insightface's tools expect) the images must come grouped by
    identity: key 0 is the header record ``[a, b]``, images are keys ``1..a-1``, and keys ``a..b-1`` are one
    record per identity with its image key range. Without it, images are keys ``0..n-1`` (like DALI-shuffled files).
    ``path``: a folder (gets ``train.rec``/``train.idx``/``property``) or a ``.rec`` path.
    Returns ``{"images", "num_classes", "split_records", "rec", "idx"}``.
    """
    p = Path(path)
    rec = p if p.suffix == ".rec" else p / "train.rec"
    idx = rec.with_suffix(".idx")
    first = 1 if insightface_header else 0
    ranges: dict[int, list[int]] = {}
    order: list[int] = []
    max_label = -1
    n = 0
    with RecordWriter(rec, idx) as w:
        if insightface_header:
            w.write_idx(0, pack(IRHeader(2, np.zeros(2, np.float32)), b""))  # placeholder, same size, rewritten below
        for data, label in items:
            key = first + n
            lab = int(label) if np.isscalar(label) else int(np.asarray(label).ravel()[0])
            if lab < 0:
                raise ValueError(f"{rec}: image {n} has negative label {lab}")
            if insightface_header:
                if lab in ranges and order[-1] != lab:
                    raise ValueError(
                        f"{rec}: image {n} (label {lab}) is not next to the other images of its identity; "
                        "insightface-style files need images grouped by identity (sort them, or pass "
                        "insightface_header=False)"
                    )
                if lab not in ranges:
                    ranges[lab] = [key, key + 1]
                    order.append(lab)
                else:
                    ranges[lab][1] = key + 1
            header = IRHeader(0, float(lab)) if np.isscalar(label) else IRHeader(0, np.asarray(label, np.float32))
            w.write_idx(key, pack(header, data))
            max_label = max(max_label, lab)
            n += 1
        if insightface_header:
            a = first + n
            for j, lab in enumerate(order):
                w.write_idx(a + j, pack(IRHeader(2, np.asarray(ranges[lab], np.float32), 0, 0), b""))
            b = a + len(order)
        splits = w.split_records
    if insightface_header:
        with open(rec, "r+b") as f:  # fill in the header record now that a and b are known
            f.seek(8)
            f.write(pack(IRHeader(2, np.asarray([a, b], np.float32)), b""))
    ncls = int(num_classes) if num_classes is not None else max_label + 1
    if ncls <= max_label:
        raise ValueError(f"{rec}: num_classes={ncls} but labels go up to {max_label}")
    write_property(rec.parent, ncls, image_size)
    return {"images": n, "num_classes": ncls, "split_records": splits, "rec": rec, "idx": idx}
