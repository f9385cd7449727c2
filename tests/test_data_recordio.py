"""MXNet RecordIO reading and writing without mxnet: format details, split records, corrupt files, workers."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facezoo.data import DataError, RecordIOFaces, encode_image
from facezoo.data.recordio import (
    MAGIC,
    IRHeader,
    RecordReader,
    RecordWriter,
    pack,
    read_index,
    unpack,
    write_face_records,
)

MAGIC_FLOAT = float(np.frombuffer(struct.pack("<I", MAGIC), "<f4")[0])


@pytest.fixture
def write_records(random_images):
    """``write_records(folder, labels, header=True, seed=0)``: PNG records of random 16x16 images; -> (images, info)."""

    def write(folder, labels, header=True, seed=0):
        ims = random_images(len(labels), seed=seed)
        info = write_face_records(
            folder, ((encode_image(im, "png"), lab) for im, lab in zip(ims, labels)), insightface_header=header
        )
        return ims, info

    return write


def test_record_byte_layout():
    # one plain record: magic, lrec = length (cflag 0), payload, zero padding to 4 bytes
    payload = pack(IRHeader(0, 3.0, 7, 0), b"abcde")
    assert payload[:24] == struct.pack("<IfQQ", 0, 3.0, 7, 0) and payload[24:] == b"abcde"
    multi = pack(IRHeader(0, [1.0, 2.0]), b"xy")
    assert struct.unpack_from("<I", multi)[0] == 2 and multi[24:32] == np.array([1, 2], "<f4").tobytes()
    head, data = unpack(multi)
    assert head.flag == 2 and head.label.tolist() == [1.0, 2.0] and data == b"xy"


def test_writer_bytes(tmp_path):
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write_idx(5, b"abcde")
        w.write_idx(9, b"1234")
    raw = (tmp_path / "a.rec").read_bytes()
    assert raw == struct.pack("<II", MAGIC, 5) + b"abcde\0\0\0" + struct.pack("<II", MAGIC, 4) + b"1234"
    assert (tmp_path / "a.idx").read_text() == "5\t0\n9\t16\n"


def test_roundtrip_insightface_layout(tmp_path, write_records):
    labels = [0, 0, 1, 1, 1, 2]
    ims, info = write_records(tmp_path, labels)
    assert info["images"] == 6 and info["num_classes"] == 3
    assert (tmp_path / "property").read_text().strip() == "3,112,112"
    ds = RecordIOFaces(tmp_path)
    assert ds.header == (7, 10) and len(ds) == 6 and ds.num_classes == 3
    for i in range(6):
        im, lab = ds[i]
        assert im.dtype == torch.uint8 and im.shape == (3, 16, 16)
        assert torch.equal(im, ims[i]) and lab == labels[i] and isinstance(lab, int)
    # identity records: label [start, end) of each identity's image keys
    keys, offs = read_index(tmp_path / "train.idx")
    reader = RecordReader(tmp_path / "train.rec")
    ranges = [unpack(reader.read_at(int(offs[k]), k))[0].label.tolist() for k in range(7, 10)]
    assert ranges == [[1, 3], [3, 6], [6, 7]]
    # num_classes without property comes from the header record
    (tmp_path / "property").unlink()
    assert RecordIOFaces(tmp_path / "train.rec").num_classes == 3
    with pytest.raises(IndexError):
        ds[6]


def test_file_without_header_record(tmp_path, write_records):
    labels = [4, 1, 4, 0, 2]
    ims, _ = write_records(tmp_path, labels, header=False)
    (tmp_path / "property").unlink()
    ds = RecordIOFaces(tmp_path / "train.rec")
    assert ds.header is None and len(ds) == 5
    assert ds.num_classes == 5  # scanned: max label + 1
    assert [ds[i][1] for i in range(5)] == labels
    assert torch.equal(ds[3][0], ims[3])


def test_split_records_and_multi_float_labels(tmp_path, random_images):
    # the float whose bytes are the magic sits at an aligned offset: dmlc splits the record there
    ims = random_images(3)
    items = [
        (encode_image(ims[0], "png"), [0.0, MAGIC_FLOAT]),
        (encode_image(ims[1], "png"), [1.0, MAGIC_FLOAT, MAGIC_FLOAT, 0.5]),
        (encode_image(ims[2], "png"), 1),
    ]
    info = write_face_records(tmp_path, items)
    assert info["split_records"] == 3
    raw = (tmp_path / "train.rec").read_bytes()
    _, offs = read_index(tmp_path / "train.idx")
    flags = []
    pos = int(offs[2])  # second image: parts with cflag 1, 2, 3
    while True:
        magic, lrec = struct.unpack_from("<II", raw, pos)
        assert magic == MAGIC
        flags.append(lrec >> 29)
        if lrec >> 29 in (0, 3):
            break
        pos += 8 + ((lrec & (2**29 - 1)) + 3) // 4 * 4
    assert flags == [1, 2, 3]
    ds = RecordIOFaces(tmp_path)
    assert [ds[i][1] for i in range(3)] == [0, 1, 1]
    for i in range(3):
        assert torch.equal(ds[i][0], ims[i])
    head, _ = ds.read_record(1)
    assert head.flag == 4 and np.array_equal(head.label.view("<u4")[1:3], [MAGIC, MAGIC])
    assert ds.label(1) == 1


def test_hand_assembled_split_record(tmp_path, random_images):
    # independent of our writer: payload = P1 + magic + P2, stored as cflag 1 and cflag 3 parts
    img = encode_image(random_images(1)[0], "png")
    p1 = struct.pack("<IfQQ", 0, 3.0, 0, 0)  # 24 bytes, aligned
    p2 = img
    rec = struct.pack("<II", MAGIC, (1 << 29) | len(p1)) + p1
    rec += struct.pack("<II", MAGIC, (3 << 29) | len(p2)) + p2 + b"\0" * (-len(p2) % 4)
    (tmp_path / "h.rec").write_bytes(rec)
    (tmp_path / "h.idx").write_text("0\t0\n")
    payload = RecordReader(tmp_path / "h.rec").read_at(0, 0)
    assert payload == p1 + struct.pack("<I", MAGIC) + p2
    head, data = unpack(payload)
    assert head.label == 3.0 and data.startswith(struct.pack("<I", MAGIC))


def _corrupt_file(tmp_path, write_records):
    ims, _ = write_records(tmp_path, [0, 0, 1, 1, 2], seed=1)
    keys, offs = read_index(tmp_path / "train.idx")
    return ims, {int(k): int(o) for k, o in zip(keys, offs)}


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("kind", ["magic", "past_end", "undecodable", "truncated"])
def test_corrupt_records_name_file_key_offset(tmp_path, kind, fmt, random_images):
    # through ds[i] and through a batch (__getitems__: for JPEG the memory-mapped fast path first)
    ims = random_images(5, seed=1)
    write_face_records(tmp_path, ((encode_image(im, fmt), lab) for im, lab in zip(ims, [0, 0, 1, 1, 2])))
    keys, offs = read_index(tmp_path / "train.idx")
    off = {int(k): int(o) for k, o in zip(keys, offs)}
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    if kind == "magic":
        lines[2] = f"2\t{off[2] + 4}"
        match, key, o = "wrong magic", 2, off[2] + 4
    elif kind == "past_end":
        lines[2] = f"2\t{rec.stat().st_size + 100}"
        match, key, o = "past the end", 2, rec.stat().st_size + 100
    elif kind == "undecodable":  # keep the image's first two bytes (a JPEG's SOI marker), clobber what follows
        raw = bytearray(rec.read_bytes())
        start = off[2] + 8 + 24 + 2
        raw[start : start + 120] = b"\x00" * 120
        rec.write_bytes(bytes(raw))
        match, key, o = "cannot decode", 2, off[2]
    else:  # truncated: cut the file in the middle of the last image
        raw = rec.read_bytes()
        rec.write_bytes(raw[: off[5] + 40])
        lines = lines[:6]
        match, key, o = "truncated", 5, off[5]
    idx.write_text("\n".join(lines) + "\n")
    ds = RecordIOFaces(tmp_path)
    i = key - 1
    for read in (lambda: ds[i], lambda: ds.__getitems__([0, i, 3])):
        with pytest.raises(DataError, match=match) as err:
            read()
        msg = str(err.value)
        assert "train.rec" in msg and f"record key {key}" in msg and f"byte offset {o}" in msg
    for j in range(len(ds)):
        if j != i:
            ds[j]  # the others still read
    skipping = RecordIOFaces(tmp_path, on_error="skip")
    assert len(skipping.__getitems__(list(range(len(skipping))))) == len(skipping) and skipping.skipped == 1


def test_skip_mode_counts_and_logs(tmp_path, caplog, write_records):
    ims, off = _corrupt_file(tmp_path, write_records)
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    lines[2] = f"2\t{off[2] + 4}"
    idx.write_text("\n".join(lines) + "\n")
    ds = RecordIOFaces(tmp_path, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="facezoo.data.sources"):
        im, lab = ds[1]
    assert torch.equal(im, ims[2]) and lab == 1  # replaced by the next readable sample
    assert ds.skipped == 1
    assert "1 skipped so far" in caplog.text and "record key 2" in caplog.text
    with pytest.raises(ValueError, match="on_error"):
        RecordIOFaces(tmp_path, on_error="ignore")


def test_missing_index_and_bad_index_lines(tmp_path, write_records):
    write_records(tmp_path, [0, 1])
    (tmp_path / "train.idx").write_text("0\t0\nnot-a-line\n")
    with pytest.raises(DataError, match=r"train\.idx:2"):
        RecordIOFaces(tmp_path)
    (tmp_path / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match="index file"):
        RecordIOFaces(tmp_path)


def test_dataloader_workers_and_transform(tmp_path, write_records):
    labels = [i // 3 for i in range(24)]
    ims, _ = write_records(tmp_path, labels, seed=2)
    ds = RecordIOFaces(tmp_path, transform=lambda x: x.float() / 255)
    ds[0]  # opens a handle in the parent; workers must not share it
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.allclose(x, ims.float() / 255) and y.tolist() == labels
    assert ds.num_classes == 8


def test_batch_read_equals_single_items(tmp_path, random_images):
    # __getitems__ (what DataLoader calls) = [ds[i] ...]: plain records on the fast path, split records and
    # multi-float labels through the checked path, negative indices, out-of-range errors
    ims = random_images(5, seed=3)
    items = [
        (encode_image(ims[0], "png"), 0),
        (encode_image(ims[1], "png"), [1.0, MAGIC_FLOAT]),
        (encode_image(ims[2], "jpeg"), 1),
        (encode_image(ims[3], "png"), [2.0, 0.5]),
        (encode_image(ims[4], "png"), 2),
    ]
    assert write_face_records(tmp_path, items)["split_records"] == 1
    ds = RecordIOFaces(tmp_path, transform=lambda x: x[:, :8])
    order = [4, 1, 0, 3, 2, -1, 1]
    batch = ds.__getitems__(order)
    single = [ds[i] for i in order]
    assert [lab for _, lab in batch] == [2, 1, 0, 2, 1, 2, 1] == [lab for _, lab in single]
    assert all(type(lab) is int for _, lab in batch)
    for (a, _), (b, _) in zip(batch, single):
        assert a.shape == (3, 8, 16) and torch.equal(a, b)
    assert torch.equal(batch[0][0], ims[4][:, :8]) and ds.__getitems__([]) == []
    with pytest.raises(IndexError, match="index 5 out of range"):
        ds.__getitems__([0, 5])


def test_batch_read_errors_and_skips(tmp_path, caplog, write_records):
    ims, off = _corrupt_file(tmp_path, write_records)
    rec = tmp_path / "train.rec"
    raw = bytearray(rec.read_bytes())
    raw[off[2] + 8 + 24 : off[2] + 8 + 40] = b"\x00" * 16  # key 2 (item 1) no longer decodes
    rec.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train\.rec: record key 2 at byte offset \d+: .*cannot decode"):
        RecordIOFaces(tmp_path).__getitems__([0, 1, 2])
    ds = RecordIOFaces(tmp_path, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="facezoo.data.sources"):
        batch = ds.__getitems__([0, 1, 2])
    assert ds.skipped == 1 and "record key 2" in caplog.text
    assert [lab for _, lab in batch] == [0, 1, 1]  # item 1 replaced by the next readable one, as ds[1] does
    assert torch.equal(batch[1][0], ims[2]) and torch.equal(batch[2][0], ims[2])


def _jpeg_file(tmp_path, n=12, odd=()):
    """n JPEG faces (some other-sized), written insightface-style; returns the records' bytes and labels."""
    g = torch.Generator().manual_seed(7)
    ims = [(torch.rand(3, 20 if k in odd else 16, 16, generator=g) * 255).to(torch.uint8) for k in range(n)]
    data = [encode_image(im, "jpeg", 90) for im in ims]
    write_face_records(tmp_path, ((d, k // 3) for k, d in enumerate(data)))
    return data, [k // 3 for k in range(n)]


def test_jpeg_batches_decode_into_one_buffer(tmp_path):
    from facezoo.data import collate_faces, decode_rgb
    from facezoo.data.collate import PooledSamples

    data, labels = _jpeg_file(tmp_path)
    ds = RecordIOFaces(tmp_path)
    order = [5, 0, 11, 3, -2, 7]
    batch = ds.__getitems__(order)
    assert type(batch) is PooledSamples and len(batch) == 6
    want = [decode_rgb(data[i]) for i in order]
    for (im, lab), ref, i in zip(batch, want, order):
        assert torch.equal(im, ref) and lab == labels[i] and type(lab) is int
    assert batch[1:3][1][1] == labels[11] and torch.equal(batch[-1][0], want[-1])
    x, y = collate_faces(batch)
    assert x.data_ptr() == batch.buffer.data_ptr() and torch.equal(x, torch.stack(want))
    assert y.tolist() == [labels[i] for i in order]
    again, _ = collate_faces(batch)  # the buffer is handed out once; a second collate copies
    assert again.data_ptr() != x.data_ptr() and torch.equal(again, x)
    assert ds.reader.mapping() is not None and ds.reader.words() is not None


def test_jpeg_batch_mixed_with_item_path_records(tmp_path):
    # a batch mixing plain JPEGs with records off the fast path gives exactly [ds[i] for i in order]
    g = torch.Generator().manual_seed(8)
    ims = [(torch.rand(3, 16, 16, generator=g) * 255).to(torch.uint8) for _ in range(6)]
    items = [
        (encode_image(ims[0], "jpeg"), 0),
        (encode_image(ims[1], "jpeg"), [1.0, MAGIC_FLOAT]),  # split
        (encode_image(ims[2], "png"), 1),
        (encode_image(ims[3], "jpeg"), [2.0, 0.5]),  # multi-float label
        (encode_image(ims[4][:, :12], "jpeg"), 2),
        (encode_image(ims[5], "jpeg"), 3),
    ]  # another size
    write_face_records(tmp_path, items)
    ds = RecordIOFaces(tmp_path)
    for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 5], [0, 5, 0]):
        batch = ds.__getitems__(order)
        single = [ds[i] for i in order]
        assert [lab for _, lab in batch] == [lab for _, lab in single]
        for (a, _), (b, _) in zip(batch, single):
            assert torch.equal(a, b)
    from facezoo.data import collate_faces

    x, y = collate_faces(ds.__getitems__([2, 0, 5]))  # PNG first, then JPEGs decoded into the same buffer
    assert torch.equal(x[1], ds[0][0]) and y.tolist() == [1, 0, 3]


def test_reader_map_is_per_process(tmp_path):
    import pickle

    _jpeg_file(tmp_path, n=3)
    ds = RecordIOFaces(tmp_path)
    assert ds.reader.mapping() is ds.reader.mapping() and len(ds.reader.words()) == ds.reader.size // 4
    clone = pickle.loads(pickle.dumps(ds))  # spawn-style workers get no map, and make their own
    assert clone.reader._map is None and clone.reader._words is None
    assert torch.equal(clone.__getitems__([2])[0][0], ds[2][0])
    ds.reader._map_pid = -1  # as seen from a forked child: map again
    old = ds.reader._map
    assert ds.reader.mapping() is not old and ds.reader.words() is not None
    ds.reader.close()
    assert ds.reader._map is None
