"""Forward throughput and peak memory of the IResNet heads, side by side, per depth.

For each depth the baseline (flatten, insightface) and the GAP / GWP / GDC variants run in the same process, in
interleaved rounds (so machine noise hits all of them alike), and the table gives each head's ratio to the baseline.
Peak memory is weights plus the activation peak of one forward pass (CUDA: ``torch.cuda.max_memory_allocated``;
CPU: weight bytes + the peak of live tensor bytes from the profiler's allocator records, which is deterministic,
unlike RSS).

    python benchmarks/bench_models.py                       # depths 18 34 50 100, batch 8, CPU
    python benchmarks/bench_models.py --depths 50 --batch-size 64 --device cuda
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Dict, List

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler (memory measurement) quiet

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


def measure_throughput(names: List[str], batch_size: int, rounds: int, iters: int, device: str,
                       channels_last: bool, amp: bool) -> Dict[str, float]:
    """Images/s per model, timed in interleaved rounds; the best round of each model counts."""
    models = {n: build(n, device, channels_last) for n in names}
    x = torch.randn(batch_size, 3, 112, 112, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ctx = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
    best = {n: 0.0 for n in names}
    with torch.inference_mode(), ctx:
        for m in models.values():  # warm-up
            m(x)
        for _ in range(rounds):
            for n, m in models.items():
                sync(device)
                t0 = time.perf_counter()
                for _ in range(iters):
                    m(x)
                sync(device)
                best[n] = max(best[n], batch_size * iters / (time.perf_counter() - t0))
    return best


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def activation_peak_cpu(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of tensors allocated during one forward, from the profiler's allocator records.

    Each op's own allocations count from its start, frees from their time stamps; the running sum's maximum is the
    activation peak. Deterministic (it counts tensors, not pages), unlike RSS.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x)
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
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best counts)")
    p.add_argument("--iters", type=int, default=2, help="forward passes per round")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = p.parse_args()

    torch.manual_seed(0)
    suffix = "_k7" if args.stem == "k7" else ""
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    print(f"# bench_models: device={args.device} ({device_name}), torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, batch={args.batch_size}, rounds={args.rounds}x{args.iters}, "
          f"stem={args.stem}")
    print("| depth | head | images/s | ratio to baseline | peak memory (MiB) | memory ratio |")
    print("|---|---|---:|---:|---:|---:|")
    slower = []
    for depth in args.depths:
        names = {h: f"iresnet{depth}{s}{suffix}" for h, s in HEADS.items()}
        ips = measure_throughput(list(names.values()), args.batch_size, args.rounds, args.iters, args.device,
                                 args.channels_last, args.amp)
        mem = {} if args.no_memory else {h: measure_peak_memory(n, args.batch_size, args.device)
                                         for h, n in names.items()}
        base_ips = ips[names["baseline"]]
        for head, name in names.items():
            ratio = ips[name] / base_ips
            mem_txt = f"{mem[head] / 2 ** 20:.0f}" if mem else "-"
            mem_ratio = f"{mem[head] / mem['baseline']:.3f}" if mem else "-"
            print(f"| {depth} | {head} | {ips[name]:.1f} | {ratio:.3f} | {mem_txt} | {mem_ratio} |", flush=True)
            if head == "gwp" and ratio < 0.97:
                slower.append((name, ratio))
    if slower:
        print(f"GWP slower than the flatten baseline (beyond 3% noise): {slower}")
        return 1
    print("GWP is not slower than the flatten baseline at any depth (ratio >= 0.97 allowing for timing noise).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
