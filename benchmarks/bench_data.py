"""RecordIOFaces + DataLoader throughput vs the raw JPEG decode bound, side by side, per worker.

Builds a 20k-image insightface-style ``.rec`` of 112x112 JPEG faces (SyntheticFaces), then for 0 (in-process),
1 and 2 workers measures, in alternating rounds,
  bound:  the same JPEG bytes decoded from memory in a loop (``facezoo.data.decode_rgb``, the readers' decoder;
          the bytes held in writable buffers, so the bound includes no read and no copy), by max(1, W) processes
          at once (capped at the cores): what this machine can decode with that many processes;
  loader: ``RecordIOFaces`` (shuffled random access through the ``.idx``) + ``DataLoader`` (batch 256,
          persistent workers) with ``facezoo.data.collate_faces`` (the recommended collate_fn; channels-last
          batches); the same with the consumer converting each batch to channel-first memory; and with PyTorch's
          ``default_collate``.
Each round times the bound right before and after each loader segment and takes loader / mean(bound); the table
gives the median over rounds (this machine may be shared: rounds alternate so both sides see the same load).
Every batch is checked to be (256, 3, 112, 112) uint8 images + int64 labels.

    python benchmarks/bench_data.py [--images 20000] [--workers 0 1 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, default_collate

from facezoo.data import RecordIOFaces, collate_faces, decode_rgb, encode_image
from facezoo.data.recordio import write_face_records
from facezoo.data.synthetic import SyntheticFaces

BATCH = 256


def build_rec(folder: Path, n: int, unique: int = 1000) -> list[bytearray]:
    """Write the .rec; return the JPEG bytes of every record, read back from it (distinct buffers, shuffled order)."""
    faces = SyntheticFaces(num_identities=unique // 10, images_per_identity=10, seed=0)
    jpegs = [encode_image(faces[i][0], "jpeg", 95) for i in range(unique)]
    per_id = 20
    items = ((jpegs[i % unique], i // per_id) for i in range(n))
    write_face_records(folder, items, num_classes=(n + per_id - 1) // per_id)
    ds = RecordIOFaces(folder)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(2)).tolist()
    return [bytearray(ds.read_record(i)[1]) for i in order]


def _decode_loop(jpegs: list[bytearray], conn) -> None:
    torch.set_num_threads(1)
    for b in jpegs[:200]:
        decode_rgb(b)
    while True:
        seconds = conn.recv()
        if seconds is None:
            return
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            decode_rgb(jpegs[n % len(jpegs)])
            n += 1
        conn.send(n / (time.perf_counter() - start))


class DecodeBound:
    """``processes`` forked decoders of the same JPEG bytes; ``rate(s)`` runs them all at once for ``s`` seconds
    and returns their summed images/s."""

    def __init__(self, jpegs: list[bytearray], processes: int) -> None:
        ctx = mp.get_context("fork")
        self.conns, self.procs = [], []
        for _ in range(processes):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_decode_loop, args=(jpegs, theirs), daemon=True)
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)

    def rate(self, seconds: float) -> float:
        for c in self.conns:
            c.send(seconds)
        return sum(c.recv() for c in self.conns)

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join()


class LoaderStream:
    """A DataLoader iterated across rounds (workers started once); ``rate(s)`` is images/s over ``s`` seconds,
    after first draining the batches the workers prefetched while the stream was not being read."""

    def __init__(self, folder: Path, workers: int, collate_fn, contiguous: bool) -> None:
        self.loader = DataLoader(
            RecordIOFaces(folder),
            batch_size=BATCH,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
            persistent_workers=workers > 0,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(0),
        )
        self.contiguous = contiguous
        self.drain = 2 if workers == 0 else 2 * workers + 1  # prefetch_factor (2) batches per worker, + one
        self.it = iter(self.loader)

    def _next(self) -> int:
        try:
            x, y = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            x, y = next(self.it)
        if self.contiguous:
            x = x.contiguous()
        if x.shape != (BATCH, 3, 112, 112) or x.dtype != torch.uint8 or y.shape != (BATCH,) or y.dtype != torch.int64:
            raise AssertionError(f"unexpected batch {x.dtype} {tuple(x.shape)} / {y.dtype} {tuple(y.shape)}")
        return x.shape[0]

    def rate(self, seconds: float) -> float:
        for _ in range(self.drain):
            self._next()
        seen, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            seen += self._next()
        return seen / (time.perf_counter() - start)

    def close(self) -> None:
        del self.it


def cold_rates(folder: Path, images: int = 5120, rounds: int = 3) -> Optional[tuple[float, float]]:
    """In-process images/s with the ``.rec`` evicted from the page cache first (``posix_fadvise(DONTNEED)``):
    ``__getitems__`` batches (memory map, every record's pages requested at once) vs ``ds[i]`` items (one
    ``pread`` each, in turn). Medians over rounds; None where the platform cannot evict a file."""
    if not hasattr(os, "posix_fadvise"):
        return None
    rec = folder / "train.rec"
    order = torch.randperm(len(RecordIOFaces(folder)), generator=torch.Generator().manual_seed(3)).tolist()[:images]
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    got: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for k, items in enumerate((False, True)):
            fd = os.open(rec, os.O_RDONLY)
            os.fsync(fd)  # a freshly written file's pages are dirty, and dirty pages are not evicted
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            ds = RecordIOFaces(folder)
            start = time.perf_counter()
            for b in batches:
                if items:
                    [ds[i] for i in b]
                else:
                    ds.__getitems__(b)
            got[k].append(len(order) / (time.perf_counter() - start))
            ds.reader.close()  # pages still mapped are not evicted by the next round
    return statistics.median(got[0]), statistics.median(got[1])


def dataset_rate(folder: Path, images: int) -> float:
    """``RecordIOFaces[i]`` in a loop (shuffled keys), no DataLoader: the per-item path's overhead over the bound."""
    ds = RecordIOFaces(folder)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).tolist()
    for i in order[:200]:
        ds[i]
    start = time.perf_counter()
    for k in range(images):
        ds[order[k % len(order)]]
    return images / (time.perf_counter() - start)


VARIANTS = (
    ("collate_faces", collate_faces, False),
    ("collate_faces + .contiguous()", collate_faces, True),
    ("default_collate", default_collate, False),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000, help="images in the .rec")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2], help="worker counts (none: skip the table)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating bound/loader rounds per worker count")
    ap.add_argument("--seconds", type=float, default=1.5, help="length of each timed segment")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.time()
        jpegs = build_rec(folder, args.images)
        size = (folder / "train.rec").stat().st_size
        print(
            f"built {args.images}-image .rec ({size / 2**20:.1f} MiB, mean JPEG {size / args.images / 1024:.1f} KiB) "
            f"in {time.time() - t0:.1f}s; {cores} cores; {args.rounds} rounds of {args.seconds:.1f} s per cell"
        )
        one = DecodeBound(jpegs, 1)
        single, alone = one.rate(3.0), dataset_rate(folder, 8000)
        print(
            f"single process: decode bound {single:,.0f} img/s, RecordIOFaces[i] loop (per-item path) "
            f"{alone:,.0f} img/s (ratio {alone / single:.2f})"
        )
        cold = cold_rates(folder)
        if cold is not None:
            print(
                f"cold page cache (file evicted before each run, in-process): batches (map + WILLNEED) "
                f"{cold[0]:,.0f} img/s, items (pread each) {cold[1]:,.0f} img/s (ratio {cold[0] / cold[1]:.2f})"
            )
        print()
        if args.workers:
            print(
                "| workers | bound: decoders at once | bound img/s (x one) | loader + collate_faces img/s | ratio "
                "| + .contiguous() in the consumer: img/s | ratio | loader + default_collate img/s | ratio |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
        for w in args.workers:
            procs = max(1, min(w, cores))
            bound = one if procs == 1 else DecodeBound(jpegs, procs)
            streams = [LoaderStream(folder, w, fn, contiguous) for _, fn, contiguous in VARIANTS]
            bounds, rates, ratios = [], [[] for _ in VARIANTS], [[] for _ in VARIANTS]
            for _ in range(args.rounds):
                before = bound.rate(args.seconds)
                bounds.append(before)
                for v, stream in enumerate(streams):
                    r = stream.rate(args.seconds)
                    after = bound.rate(args.seconds)
                    bounds.append(after)
                    rates[v].append(r)
                    ratios[v].append(r / ((before + after) / 2))
                    before = after
            for stream in streams:
                stream.close()
            if bound is not one:
                bound.close()
            b = statistics.median(bounds)
            cells = " | ".join(
                f"{statistics.median(r):,.0f} | {statistics.median(q):.2f}" for r, q in zip(rates, ratios)
            )
            print(f"| {w} | {procs} | {b:,.0f} ({b / single:.2f}) | {cells} |", flush=True)
        one.close()
        print(
            f"\nratio = median over rounds of loader / mean(bound just before, just after); single-process decode "
            f"bound {single:,.0f} images/s"
        )


if __name__ == "__main__":
    main()
