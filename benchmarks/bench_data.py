"""RecordIODataset + DataLoader throughput vs the raw JPEG decode bound, side by side, per worker.

Builds a 20k-image insightface-style ``.rec`` of 112x112 JPEG faces (SyntheticFaces), then measures
  bound:  decoding the same JPEG bytes from memory in a loop (``facezoo.data.decode_rgb``, torchvision/libjpeg-turbo;
          the bytes are held in writable buffers, so the bound includes no copy),
  loader: ``RecordIODataset`` (shuffled random access through the ``.idx``) + ``DataLoader`` (batch 256), with
          ``facezoo.data.collate_faces`` (the recommended collate_fn; channels-last batches), the same with the
          consumer converting each batch to channel-first memory, and with PyTorch's ``default_collate``,
for 0 (in-process), 1 and 2 workers. Every batch is checked to be (256, 3, 112, 112) uint8 images + int64 labels.
The bound for W workers is W x the single-process decode rate (perfect scaling, capped at the number of cores);
the ratio loader/bound is the overhead of reading + batching + moving batches between processes.

    python benchmarks/bench_data.py [--images 20000] [--workers 0 1 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate

from facezoo.data import RecordIODataset, collate_faces, decode_rgb, encode_image
from facezoo.data.recordio import write_face_records
from facezoo.data.synthetic import SyntheticFaces


def build_rec(folder: Path, n: int, unique: int = 1000) -> list[bytearray]:
    """Write the .rec; return the JPEG bytes of every record, read back from it (distinct buffers, shuffled order)."""
    faces = SyntheticFaces(num_identities=unique // 10, images_per_identity=10, seed=0)
    jpegs = [encode_image(faces[i][0], "jpeg", 95) for i in range(unique)]
    per_id = 20
    items = ((jpegs[i % unique], i // per_id) for i in range(n))
    write_face_records(folder, items, num_classes=(n + per_id - 1) // per_id)
    ds = RecordIODataset(folder)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(2)).tolist()
    return [bytearray(ds.read_record(i)[1]) for i in order]


def decode_bound(jpegs: list[bytearray], seconds: float = 4.0) -> float:
    """The same JPEG bytes, already in memory, decoded in a loop by the same decoder."""
    torch.set_num_threads(1)
    for b in jpegs[:200]:
        decode_rgb(b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        decode_rgb(jpegs[n % len(jpegs)])
        n += 1
    return n / (time.perf_counter() - start)


def loader_rate(folder: Path, workers: int, images: int, collate_fn=collate_faces, batch: int = 256,
                contiguous: bool = False) -> float:
    """Images/s out of the DataLoader; ``contiguous``: the consumer also converts each batch to channel-first
    memory (``collate_faces`` delivers channels-last memory, ``default_collate`` channel-first)."""
    ds = RecordIODataset(folder)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
                        collate_fn=collate_fn)
    it = iter(loader)
    for _ in range(2 if workers == 0 else 2 * workers):  # warm up (workers start, page cache)
        next(it)
    seen, start = 0, time.perf_counter()
    while seen < images:
        try:
            x, y = next(it)
            if contiguous:
                x = x.contiguous()
        except StopIteration:
            it = iter(loader)
            continue
        if x.shape != (batch, 3, 112, 112) or x.dtype != torch.uint8 or y.shape != (batch,) or y.dtype != torch.int64:
            raise AssertionError(f"unexpected batch {x.dtype} {tuple(x.shape)} / {y.dtype} {tuple(y.shape)}")
        seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def dataset_rate(folder: Path, images: int) -> float:
    """``RecordIODataset[i]`` in a loop (shuffled keys), no DataLoader: the reader's own overhead over the bound."""
    ds = RecordIODataset(folder)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).tolist()
    for i in order[:200]:
        ds[i]
    start = time.perf_counter()
    for k in range(images):
        ds[order[k % len(order)]]
    return images / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--measure", type=int, default=12000, help="images timed per configuration")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.time()
        jpegs = build_rec(folder, args.images)
        size = (folder / "train.rec").stat().st_size
        print(f"built {args.images}-image .rec ({size / 2**20:.1f} MiB, mean JPEG {size / args.images / 1024:.1f} KiB) "
              f"in {time.time() - t0:.1f}s; {cores} cores")
        single = decode_bound(jpegs)
        alone = dataset_rate(folder, min(args.measure, 8000))
        print(f"single process: decode bound {single:,.0f} img/s, RecordIODataset[i] loop {alone:,.0f} img/s "
              f"(ratio {alone / single:.2f})")
        # the machine may be shared: the bound is re-measured right before and after each loader run
        print(f"\n| workers | bound (decode from memory) img/s | loader + collate_faces img/s | per worker img/s "
              f"| ratio | + .contiguous() in the consumer: img/s | ratio | loader + default_collate img/s | ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
        for w in args.workers:
            scale = max(1, min(w, cores))
            b0 = decode_bound(jpegs, 2.0)
            rate = loader_rate(folder, w, args.measure, collate_faces)
            b1 = decode_bound(jpegs, 2.0)
            cont = loader_rate(folder, w, args.measure, collate_faces, contiguous=True)
            b2 = decode_bound(jpegs, 2.0)
            base = loader_rate(folder, w, args.measure, default_collate)
            b3 = decode_bound(jpegs, 2.0)
            bound, bc, bb = (scale * (p + q) / 2 for p, q in ((b0, b1), (b1, b2), (b2, b3)))
            print(f"| {w} | {bound:,.0f} | {rate:,.0f} | {rate / max(1, w):,.0f} | {rate / bound:.2f} | {cont:,.0f} "
                  f"| {cont / bc:.2f} | {base:,.0f} | {base / bb:.2f} |", flush=True)
        print(f"\nsingle-process decode bound: {single:,.0f} images/s")


if __name__ == "__main__":
    main()
