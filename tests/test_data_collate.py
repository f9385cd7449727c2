"""collate_faces: same batches as default_collate, buffers reused only when nobody can see them, workers."""

from __future__ import annotations

import gc

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from facezoo.data import RecordIOFaces, collate_faces, encode_image
from facezoo.data.recordio import write_face_records


class _Faces(Dataset):
    def __init__(self, n: int = 40, size: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].clone(), i // 4


def test_same_batches_as_default_collate():
    ds = _Faces()
    samples = [ds[i] for i in (5, 0, 39)]
    x, y = collate_faces(samples)
    rx, ry = default_collate(samples)
    assert torch.equal(x, rx) and torch.equal(y, ry) and x.dtype == torch.uint8 and y.dtype == torch.int64
    f = [(im.float(), lab) for im, lab in samples]  # transformed images of any dtype
    assert torch.equal(collate_faces(f)[0], default_collate(f)[0])
    other = [{"a": torch.ones(2)}, {"a": torch.zeros(2)}]  # not (image, label): handed to default_collate
    assert torch.equal(collate_faces(other)["a"], default_collate(other)["a"])
    strings = [(torch.ones(2), "x"), (torch.ones(2), "y")]
    assert list(collate_faces(strings)[1]) == ["x", "y"]
    floats = [(torch.ones(2), 0.5), (torch.ones(2), 1.5)]  # not truncated to ints
    assert collate_faces(floats)[1].tolist() == [0.5, 1.5]
    assert collate_faces([(torch.ones(2), torch.tensor(3)), (torch.ones(2), 4)])[1].tolist() == [3, 4]
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        collate_faces([(torch.ones(3, 4, 4), 0), (torch.ones(3, 5, 4), 1)])


def test_buffers_are_reused_only_when_released():
    ds = _Faces()
    batch = [ds[i] for i in range(8)]
    first, _ = collate_faces(batch)
    ptr = first.data_ptr()
    held = [collate_faces(batch)[0] for _ in range(3)]  # while `first` lives, others get other memory
    assert ptr not in {h.data_ptr() for h in held}
    view = first[2]
    del first
    gc.collect()
    again = [collate_faces([ds[i] for i in range(8, 16)])[0] for _ in range(2)]
    assert ptr not in {a.data_ptr() for a in again}  # a view still holds it
    assert torch.equal(view, ds.images[2])
    del view, again
    gc.collect()
    reused = collate_faces(batch)[0]
    assert torch.equal(reused, torch.stack([b[0] for b in batch]))
    # more live batches than pooled buffers: fresh memory, nothing overwritten
    many = [collate_faces([ds[(k + j) % 40] for j in range(8)])[0] for k in range(20)]
    for k, m in enumerate(many):
        assert torch.equal(m, ds.images[[(k + j) % 40 for j in range(8)]])


def test_decoded_batches_are_channels_last_and_zero_copy(tmp_path):
    # RecordIOFaces decodes straight into a pooled (B, H, W, 3) buffer; collate_faces hands it out whole
    g = torch.Generator().manual_seed(2)
    ims = (torch.rand(16, 3, 10, 12, generator=g) * 255).to(torch.uint8)
    write_face_records(tmp_path, ((encode_image(im, "png"), i) for i, im in enumerate(ims)))
    ds = RecordIOFaces(tmp_path)
    items = ds.__getitems__(list(range(8)))
    x, y = collate_faces(items)
    assert x.shape == (8, 3, 10, 12) and x.is_contiguous(memory_format=torch.channels_last)
    assert x.data_ptr() == items[0][0].data_ptr() and torch.equal(x, ims[:8]) and y.tolist() == list(range(8))
    again, _ = collate_faces(items)  # collating the same samples twice copies the second time
    assert again.data_ptr() != x.data_ptr() and torch.equal(again, x)
    ref, _ = default_collate(ds.__getitems__(list(range(8, 16))))  # default_collate still works on them
    assert ref.is_contiguous() and torch.equal(ref, ims[8:])
    del items, x, again, ref
    gc.collect()
    ptrs = {b[0].data_ptr() for b in DataLoader(ds, batch_size=4, collate_fn=collate_faces)}
    assert len(ptrs) <= 2  # dropped batches' buffers come back to the pool


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches_stay_intact(tmp_path, workers):
    g = torch.Generator().manual_seed(1)
    ims = (torch.rand(48, 3, 12, 12, generator=g) * 255).to(torch.uint8)
    write_face_records(tmp_path, ((encode_image(im, "png"), i // 4) for i, im in enumerate(ims)))
    ds = RecordIOFaces(tmp_path)
    loader = DataLoader(ds, batch_size=8, num_workers=workers, collate_fn=collate_faces, persistent_workers=workers > 0)
    for epoch in range(3):
        kept = []
        for b, (x, y) in enumerate(loader):
            assert x.shape == (8, 3, 12, 12) and x.dtype == torch.uint8
            assert y.tolist() == [(b * 8 + j) // 4 for j in range(8)]
            assert torch.equal(x, ims[b * 8 : (b + 1) * 8])
            if b % 2 == 0:
                kept.append((b, x))  # held across later batches: must not be overwritten
        for b, x in kept:
            assert torch.equal(x, ims[b * 8 : (b + 1) * 8]), (epoch, b)


def test_worker_buffers_cross_once_then_travel_by_key(tmp_path, monkeypatch):
    # each worker buffer's shared memory reaches the main process once; later batches in it carry only its key,
    # and the main process drops the buffers of workers that have exited when a newer worker's buffer arrives
    from facezoo.data import collate as C

    g = torch.Generator().manual_seed(4)
    ims = (torch.rand(96, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    write_face_records(tmp_path, ((encode_image(im, "png"), i // 4) for i, im in enumerate(ims)))
    expected = torch.stack([RecordIOFaces(tmp_path)[i][0] for i in range(96)])  # PNG: lossless = ims
    assert torch.equal(expected, ims)
    calls = {"whole": 0, "key": 0}
    rebuild = C._rebuild

    def counting(token, key, buffer, labels, channels_last):
        calls["whole" if buffer is not None else "key"] += 1
        return rebuild(token, key, buffer, labels, channels_last)

    monkeypatch.setattr(C, "_REMOTE", {})
    ds = RecordIOFaces(tmp_path)
    for epoch in range(2):  # fresh workers each epoch
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_faces, timeout=60)
        it = iter(loader)  # workers fork here, with the real _rebuild; the main process unpickles with the counter
        monkeypatch.setattr(C, "_rebuild", counting)
        for b, (x, y) in enumerate(it):
            assert torch.equal(x, ims[b * 4 : (b + 1) * 4]) and y.tolist() == [b] * 4
        monkeypatch.setattr(C, "_rebuild", rebuild)
        tokens = {tok for tok, _ in C._REMOTE}
        assert len(tokens) == 2  # this epoch's two workers only: the first epoch's were dropped
        if epoch == 0:
            first = tokens
        else:
            assert not tokens & first
    assert calls["whole"] + calls["key"] == 48 and 0 < calls["whole"] <= 2 * 2 * C._SLOTS < calls["key"]
    assert len(C._REMOTE) <= 2 * C._SLOTS


def test_unknown_worker_buffer_key_is_a_clear_error():
    from facezoo.data import collate as C

    with pytest.raises(RuntimeError, match="worker pid 12345 refers to its buffer 3"):
        C._rebuild((12345, 1), 3, None, torch.zeros(2, dtype=torch.int64).numpy(), True)
