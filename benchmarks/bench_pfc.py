"""Memory and step time of Partial FC (sample rates 1.0, 0.3, 0.1) vs a plain full FC + softmax.

One training step = forward + backward + SGD (momentum 0.9, weight decay 5e-4) over the class centers, for a
batch of random embeddings standing in for the backbone output (the backbone is the same for every variant, so
it is left out). Every configuration runs in a fresh subprocess, so memory figures do not mix:

- CPU: peak resident memory (``ru_maxrss``) of the subprocess minus its resident memory just before the
  classifier is built (torch imported, batch created). It counts everything the step allocates: centers,
  gradients, momentum, logits, temporaries.
- CUDA (whenever ``torch.cuda.is_available()``): ``torch.cuda.max_memory_allocated`` minus the memory
  allocated before the classifier is built.

Step time is the median of ``--steps`` timed steps after ``--warmup`` untimed ones. Variants:
``full_fc`` (reference: logits = emb @ W.T, cross-entropy), ``full_fc_arcface`` (the same with normalized
embeddings/centers and the ArcFace margin, no Partial FC), and ``pfc_<rate>`` (facezoo.losses.PartialFC with
ArcFace, one process). Ratios are facezoo / reference (full_fc).

    python benchmarks/bench_pfc.py                       # 1M classes, batch 128, E 512, CPU (+ CUDA if present)
    python benchmarks/bench_pfc.py --classes 100000 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(variant: str, device: str, classes: int, batch: int, emb_size: int, steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F

    from facezoo.losses import ArcFace, PartialFC

    torch.manual_seed(0)
    dev = torch.device(device)
    emb = torch.randn(batch, emb_size, device=dev) * 10
    labels = torch.randint(0, classes, (batch,), device=dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_bytes()

    if variant.startswith("full_fc"):
        weight = torch.nn.Parameter(torch.normal(0.0, 0.01, (classes, emb_size), device=dev))
        params = [weight]
        arc = ArcFace(m=0.5) if variant == "full_fc_arcface" else None

        def loss_fn(e: torch.Tensor) -> torch.Tensor:
            if arc is None:
                return F.cross_entropy(F.linear(e, weight), labels)
            cos = F.linear(F.normalize(e), F.normalize(weight)).clamp(-1, 1)
            return F.cross_entropy(arc(cos, labels), labels)

    else:
        rate = float(variant.split("_", 1)[1])
        module = PartialFC(ArcFace(m=0.5), emb_size, classes, sample_rate=rate).to(dev)
        params = list(module.parameters())

        def loss_fn(e: torch.Tensor) -> torch.Tensor:
            return module(e, labels)

    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    times, first_loss = [], None
    for i in range(warmup + steps):
        e = emb.clone().requires_grad_(True)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = loss_fn(e)
        loss.backward()
        if first_loss is None:
            first_loss = float(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "variant": variant,
        "device": device,
        "step_s": statistics.median(times),
        "peak_bytes": peak,
        "first_loss": first_loss,
    }


def run_one(variant: str, device: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--device",
        device,
        "--classes",
        str(args.classes),
        "--batch",
        str(args.batch),
        "--emb",
        str(args.emb),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"variant": variant, "device": device, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict], device: str) -> str:
    ref = next((r for r in results if r["variant"] == "full_fc" and "error" not in r), None)
    lines = [
        f"| variant ({device}) | step time (s) | peak memory (GiB) | time / full_fc | memory / full_fc |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | |")
            continue
        gib = r["peak_bytes"] / 2**30
        tr = f"{r['step_s'] / ref['step_s']:.2f}" if ref else "n/a"
        mr = f"{r['peak_bytes'] / ref['peak_bytes']:.2f}" if ref else "n/a"
        lines.append(f"| {r['variant']} | {r['step_s']:.3f} | {gib:.2f} | {tr} | {mr} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--emb", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rates", default="1.0,0.3,0.1", help="Partial FC sample rates")
    p.add_argument(
        "--variants",
        default="full_fc,full_fc_arcface,pfc",
        help="comma list of full_fc, full_fc_arcface, pfc (pfc expands to one run per --rates value)",
    )
    p.add_argument("--devices", default="auto", help="'auto' (cpu, plus cuda when available), or e.g. 'cuda'")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.device, args.classes, args.batch, args.emb, args.steps, args.warmup)))
        return 0

    import torch

    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = args.devices.split(",")
    variants = []
    for v in args.variants.split(","):
        if v == "pfc":
            variants += [f"pfc_{float(r)}" for r in args.rates.split(",")]
        elif v in ("full_fc", "full_fc_arcface"):
            variants.append(v)
        else:
            p.error(f"--variants: unknown variant {v!r}")
    print(
        f"classes={args.classes} batch={args.batch} emb={args.emb} steps={args.steps} warmup={args.warmup} "
        f"torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    if "cuda" not in devices:
        print("no CUDA device: GPU rows skipped")
    for device in devices:
        results = []
        for v in variants:
            r = run_one(v, device, args)
            results.append(r)
            print(json.dumps(r), flush=True)
        print(table(results, device), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
