"""Training-step throughput and peak memory of the spatial heads of the other families, side by side.

One function per comparison (``COMPARISONS``); each builds its models in one process, times a forward + backward
step of each in interleaved rounds (so machine noise hits all alike) and prints each head's ratio to the family's
own head (GDC for MobileFaceNet). Peak memory is weights + gradients + the peak of live tensor bytes during one
step (CPU: the profiler's allocator records, deterministic; CUDA: ``torch.cuda.max_memory_allocated``).

    python benchmarks/bench_zoo.py                          # every comparison, batch 32, CPU
    python benchmarks/bench_zoo.py --only mobilefacenet --batch-size 128 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Tuple

import timm
import torch
from bench_models import cpu_name, interleaved_rates, peak_live_bytes, summarize, sync, weight_bytes

import facezoo  # noqa: F401
from facezoo.models.profile import count_params

#: (label, model name, create_model kwargs); the first entry is the reference of the ratios
Variant = Tuple[str, str, Dict[str, Any]]


def train_step(model: torch.nn.Module, x: torch.Tensor, head_only: bool = False) -> Callable[[], None]:
    """One forward + backward of ``model`` on ``x`` (gradients dropped after each step, as an optimizer would);
    ``head_only``: of ``forward_head`` on a feature map ``x``."""
    forward = model.forward_head if head_only else model

    def step() -> None:
        forward(x).float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def step_peak_memory(model: torch.nn.Module, x: torch.Tensor, device: str) -> int:
    """Weights + gradients + the activation peak of one training step."""
    step = train_step(model, x)
    step()  # warm-up
    grads = sum(p.numel() * p.element_size() for p in model.parameters())
    if not device.startswith("cuda"):
        return weight_bytes(model) + grads + peak_live_bytes(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


HEADER = [
    "| model | head | params | images/s (best round) | ratio (median of rounds) | peak MiB | memory ratio |",
    "|---|---|---:|---:|---:|---:|---:|",
]


def compare(variants: List[Variant], args: argparse.Namespace, head_only: bool = False) -> List[str]:
    """One table: params, images/s, throughput ratio, peak memory and its ratio, each against the first variant.

    ``head_only`` times ``forward_head`` on a (B, 512, 7, 7) map at ``--head-batch-size`` (memory is not measured):
    the heads differ by a tiny share of the model's compute, which the whole-model timing cannot resolve.
    """
    models = {label: timm.create_model(name, **kw).train().to(args.device) for label, name, kw in variants}
    batch = args.head_batch_size if head_only else args.batch_size
    shape = (batch, 512, 7, 7) if head_only else (batch, 3, 112, 112)
    x = torch.randn(*shape, device=args.device, requires_grad=head_only)
    fns = {label: train_step(m, x, head_only) for label, m in models.items()}
    ref = variants[0][0]
    iters = 10 * args.iters if head_only else args.iters
    stats = summarize(interleaved_rates(fns, batch, args.rounds, iters, args.device), ref)
    measure = not (args.no_memory or head_only)
    mem = {label: step_peak_memory(m, x, args.device) for label, m in models.items()} if measure else {}
    rows = list(HEADER)
    for label, name, kw in variants:
        best, ratio = stats[label]
        pool = f", global_pool={kw['global_pool']!r}" if "global_pool" in kw else ""
        mem_txt = f"{mem[label] / 2**20:.0f} | {mem[label] / mem[ref]:.3f}" if mem else "- | -"
        rows.append(
            f"| {name}{pool} | {label} | {count_params(models[label]):,} | {best:,.1f} | {ratio:.3f} | {mem_txt} |"
        )
    sync(args.device)
    return rows


def compare_mobilefacenet(args: argparse.Namespace) -> List[str]:
    """MobileFaceNet: insightface's GDC head vs GWP (and GAP, and the learnable GWP kernels); head alone, then the
    whole model."""
    variants: List[Variant] = [
        ("gdc", "mobilefacenet", {}),
        ("gwp", "mobilefacenet_gwp", {}),
        ("gap", "mobilefacenet_gap", {}),
        ("gwp_sigma", "mobilefacenet_gwp", {"global_pool": "gwp_sigma"}),
        ("gwp_softmax", "mobilefacenet_gwp", {"global_pool": "gwp_softmax"}),
    ]
    head = compare(variants, args, head_only=True)
    whole = compare(variants, args)
    return (
        [f"Head alone (forward_head + backward on a (B,512,7,7) map, batch {args.head_batch_size}):", ""]
        + head
        + ["", f"Whole model (batch {args.batch_size}):", ""]
        + whole
    )


#: comparison name -> function giving its markdown lines (the face ViT adds its own)
COMPARISONS: Dict[str, Callable[[argparse.Namespace], List[str]]] = {
    "mobilefacenet": compare_mobilefacenet,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(COMPARISONS), help="run only these comparisons")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--head-batch-size", type=int, default=256, help="batch for the head-alone timing")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--iters", type=int, default=1, help="training steps per round and model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = p.parse_args()

    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    print(
        f"# bench_zoo: device={args.device} ({device_name}), torch {torch.__version__}, "
        f"threads={torch.get_num_threads()}, batch={args.batch_size}, rounds={args.rounds}x{args.iters}, "
        "forward + backward"
    )
    for name in args.only or COMPARISONS:
        print(f"\n## {name} (ratios to the first row of each table)\n")
        print("\n".join(COMPARISONS[name](args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
