"""Forward throughput and peak memory of the IResNet heads, side by side, per depth.

For each depth the baseline (flatten, insightface) and the GAP / GWP / GDC variants run in the same process, in
interleaved rounds (so machine noise hits all of them alike), and the table gives each head's ratio to the baseline.
The heads differ by well under 1% of a model's FLOPs, so a first table times the heads alone (``forward_head`` on the
512x7x7 map), where the difference is measurable.
Peak memory is weights plus the activation peak of one forward pass (CUDA: ``torch.cuda.max_memory_allocated``;
CPU: weight bytes + the peak of live tensor bytes from the profiler's allocator records, which is deterministic,
unlike RSS).

    python benchmarks/bench_models.py                       # depths 18 34 50 100, batch 8, CPU
    python benchmarks/bench_models.py --depths 50 --batch-size 64 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, Iterator, List, Tuple

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import facezoo  # noqa: F401

HEADS = {"baseline": "", "gap": "_gap", "gwp": "_gwp", "gdc": "_gdc"}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def build(name: str, device: str, channels_last: bool) -> torch.nn.Module:
    model = timm.create_model(name).eval().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_rates(
    fns: Dict[str, Callable[[], object]], items_per_call: int, rounds: int, iters: int, device: str
) -> Dict[str, List[float]]:
    """Items/s of each callable in every round; rounds interleave the callables, so noise hits all alike."""
    rates: Dict[str, List[float]] = {n: [] for n in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(rounds):
        for n, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sync(device)
            rates[n].append(items_per_call * iters / (time.perf_counter() - t0))
    return rates


def summarize(rates: Dict[str, List[float]], baseline: str) -> Dict[str, Tuple[float, float]]:
    """(best images/s, median over rounds of the per-round ratio to the baseline) for each callable.

    The per-round ratio compares runs made seconds apart, and its median ignores rounds hit by a burst of load.
    """
    return {n: (max(r), statistics.median(a / b for a, b in zip(r, rates[baseline]))) for n, r in rates.items()}


def measure_throughput(
    names: List[str],
    batch_size: int,
    rounds: int,
    iters: int,
    device: str,
    channels_last: bool,
    amp: bool,
    head_only: bool = False,
) -> Dict[str, List[float]]:
    """Images/s of each model's forward, or of its head alone (``forward_head`` on a 512x7x7 map)."""
    models = {n: build(n, device, channels_last) for n in names}
    if head_only:
        x = torch.randn(batch_size, 512, 7, 7, device=device)
        fns = {n: (lambda m=m: m.forward_head(x)) for n, m in models.items()}
    else:
        x = torch.randn(batch_size, 3, 112, 112, device=device)
        fns = {n: (lambda m=m: m(x)) for n, m in models.items()}
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ctx = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        return interleaved_rates(fns, batch_size, rounds, iters, device)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines on file descriptor 2 (Python's own stderr is untouched)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def activation_peak_cpu(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of tensors allocated during one forward, from the profiler's allocator records."""
    return peak_live_bytes(lambda: model(x))


def peak_live_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors allocated while ``fn`` runs (CPU), from the profiler's allocator records.

    Each op's own allocations count from its start, frees from their time stamps; the running sum's maximum is the
    activation peak. Deterministic (it counts tensors, not pages), unlike RSS.
    """
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    for e in prof.events():
        change = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if change:
            events.append((e.time_range.start if change > 0 else e.time_range.end, change))
    live = peak = 0
    for _, change in sorted(events):
        live += change
        peak = max(peak, live)
    return peak


def measure_peak_memory(name: str, batch_size: int, device: str) -> int:
    """Weights + activation peak of one forward at ``batch_size`` (CUDA: ``max_memory_allocated``)."""
    model = build(name, device, False)
    x = torch.randn(batch_size, 3, 112, 112, device=device)
    with torch.inference_mode():
        model(x[:1])  # warm-up
        if not device.startswith("cuda"):
            return weight_bytes(model) + activation_peak_cpu(model, x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        model(x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[18, 34, 50, 100])
    p.add_argument("--stem", choices=("k3", "k7"), default="k3", help="3x3 (insightface) or 7x7 stem")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--head-batch-size", type=int, default=256, help="batch for the head-alone timing")
    p.add_argument("--noise", type=float, default=0.03, help="relative timing noise tolerated for whole models")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--iters", type=int, default=1, help="forward passes per round and model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = p.parse_args()

    torch.manual_seed(0)
    suffix = "_k7" if args.stem == "k7" else ""
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    print(
        f"# bench_models: device={args.device} ({device_name}), torch {torch.__version__}, "
        f"threads={torch.get_num_threads()}, batch={args.batch_size}, rounds={args.rounds}x{args.iters}, "
        f"stem={args.stem}"
    )
    heads = {h: f"iresnet18{sfx}{suffix}" for h, sfx in HEADS.items()}
    head_ips = measure_throughput(
        list(heads.values()),
        args.head_batch_size,
        args.rounds,
        10 * args.iters,
        args.device,
        False,
        args.amp,
        head_only=True,
    )
    print(f"\nHead alone (forward_head on a (B,512,7,7) map, batch {args.head_batch_size}):\n")
    print("| head | images/s (best round) | ratio to baseline (median of rounds) |")
    print("|---|---:|---:|")
    head_stats = summarize(head_ips, heads["baseline"])
    for head, name in heads.items():
        print(f"| {head} | {head_stats[name][0]:,.0f} | {head_stats[name][1]:.2f} |")

    print(f"\nWhole model (batch {args.batch_size}):\n")
    print(
        "| depth | head | images/s (best round) | ratio to baseline (median of rounds) | peak memory (MiB) "
        "| memory ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    slower = []
    if head_stats[heads["gwp"]][1] < 1:
        slower.append(("gwp head", head_stats[heads["gwp"]][1]))
    for depth in args.depths:
        names = {h: f"iresnet{depth}{s}{suffix}" for h, s in HEADS.items()}
        ips = measure_throughput(
            list(names.values()), args.batch_size, args.rounds, args.iters, args.device, args.channels_last, args.amp
        )
        mem = (
            {}
            if args.no_memory
            else {h: measure_peak_memory(n, args.batch_size, args.device) for h, n in names.items()}
        )
        stats = summarize(ips, names["baseline"])
        for head, name in names.items():
            best, ratio = stats[name]
            mem_txt = f"{mem[head] / 2**20:.0f}" if mem else "-"
            mem_ratio = f"{mem[head] / mem['baseline']:.3f}" if mem else "-"
            print(f"| {depth} | {head} | {best:.1f} | {ratio:.3f} | {mem_txt} | {mem_ratio} |", flush=True)
            if head == "gwp" and ratio < 1 - args.noise:
                slower.append((name, ratio))
    if slower:
        print(f"\nGWP slower than the flatten baseline (beyond {args.noise:.0%} timing noise): {slower}")
        return 1
    print(
        f"\nGWP is not slower than the flatten baseline: its head is faster, and the whole model at every depth is "
        f"within {args.noise:.0%} timing noise or faster."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
