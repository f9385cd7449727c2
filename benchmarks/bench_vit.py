"""Face ViT benchmarks: the flatten head vs GWP (forward + backward), and the engine vs an insightface-style loop.

``--part heads``: ``vitface_s`` (insightface's vit_s, flatten head: Linear(144 * 512, 512), 50% of its parameters)
against ``vitface_s_gwp`` (the 12x12 token grid Gaussian-pooled instead): training-mode forward + backward
samples/s in interleaved rounds (the per-round ratio's median is the result) and peak memory (weights + gradients
+ the activation peak of one forward + backward; CPU: from the profiler's allocator records, CUDA:
``max_memory_allocated``).

``--part train``: one training step of ``vitface_t`` (token masking 0.1, drop path 0.1) under facezoo's engine
(``Trainer._train_loop``) against insightface's own ``VisionTransformer`` written here as they write it (a
``ModuleList`` of blocks, explicit attention scores, argsort / gather / cat masking) in ``train_v2.py``'s plain
loop, with the weights of the same initialization; everything else as ``bench_train.py`` (Partial FC +
CombinedMarginLoss, SGD, the same batches, dtype and threads). Target on CPU: ratio >= 1.0.

    python benchmarks/bench_vit.py --part heads --batch 8 --rounds 5
    python benchmarks/bench_vit.py --part train --batch 8 --steps 3 --rounds 5
    python benchmarks/bench_vit.py --part heads --device cuda --batch 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable, List

import timm
import torch
import torch.nn as nn
from timm.layers import DropPath
from torch.profiler import ProfilerActivity, profile

import facezoo  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import _quiet_stderr, cpu_name, interleaved_rates, summarize, weight_bytes  # noqa: E402
from bench_train import Reference, recipe, timed  # noqa: E402

from facezoo.train import Trainer  # noqa: E402

# --- insightface's face ViT, in their style (the benchmark's reference) ----------------------------------------------


class InsightfaceAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0].float(), qkv[1].float(), qkv[2].float()
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class InsightfaceMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.ReLU6(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class InsightfaceBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), InsightfaceAttention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), InsightfaceMlp(dim, 4 * dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class InsightfacePatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=9, stride=9)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class InsightfaceViT(nn.Module):
    """insightface's VisionTransformer (norm 'ln', patch 9, 8 heads), same state_dict keys as facezoo's."""

    def __init__(self, dim: int, depth: int, embed_dim: int, mask_ratio: float, drop_path_rate: float):
        super().__init__()
        self.num_patches, self.dim, self.mask_ratio = 144, dim, mask_ratio
        self.patch_embed = InsightfacePatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 144, dim))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([InsightfaceBlock(dim, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.feature = nn.Sequential(
            nn.Linear(dim * 144, dim, bias=False),
            nn.BatchNorm1d(dim, eps=2e-5),
            nn.Linear(dim, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))

    def random_masking(self, x):
        n, length, d = x.size()
        keep = int(length * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(n, length, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, dim=1, index=ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d))
        return x, ids_restore

    def forward(self, x):
        b = x.shape[0]
        x = self.patch_embed(x) + self.pos_embed
        masked = self.training and self.mask_ratio > 0
        if masked:
            x, ids_restore = self.random_masking(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.float())
        if masked:
            tokens = self.mask_token.repeat(b, ids_restore.shape[1] - x.shape[1], 1)
            x = torch.cat([x, tokens], dim=1)
            x = torch.gather(x, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        return self.feature(x.reshape(b, self.num_patches * self.dim))


class InsightfaceReference(Reference):
    """bench_train's train_v2 loop around insightface's own ViT (weights copied from the engine's backbone)."""

    def __init__(self, trainer, args: argparse.Namespace) -> None:
        super().__init__(trainer, args)
        model = trainer.backbone
        net = InsightfaceViT(model.width, len(model.blocks), model.embed_dim, model.mask_ratio, args.drop_path)
        net.load_state_dict(model.state_dict())  # same keys: strict
        self.backbone = net.to(self.device).train()
        self.opt = torch.optim.SGD(
            [{"params": self.backbone.parameters()}, {"params": self.pfc.parameters()}],
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1 - s / 10**6)


# --- heads: flatten vs GWP ------------------------------------------------------------------------------------------


def peak_cpu(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors live during ``fn()``, from the profiler's allocator records (as bench_models)."""
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


def train_step_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()

    return step


def peak_memory(model: nn.Module, x: torch.Tensor, device: str) -> int:
    """Weights + gradients + activation peak of one forward + backward."""
    step = train_step_fn(model, x)
    step()  # warm-up
    grads = sum(p.numel() * p.element_size() for p in model.parameters())
    if not device.startswith("cuda"):
        model.zero_grad(set_to_none=True)
        return weight_bytes(model) + grads + peak_cpu(lambda: model(x).float().pow(2).mean().backward())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def main_heads(args: argparse.Namespace) -> None:
    names = {"flatten": f"vitface_{args.size}", "gwp": f"vitface_{args.size}_gwp"}
    x = torch.randn(args.batch, 3, 112, 112, device=args.device)
    models = {h: timm.create_model(n).train().to(args.device) for h, n in names.items()}
    fns = {h: train_step_fn(m, x) for h, m in models.items()}
    rates = summarize(interleaved_rates(fns, args.batch, args.rounds, args.steps, args.device), "flatten")
    memory = {h: peak_memory(m, x, args.device) for h, m in models.items()}
    print("| model | head | params (M) | fwd+bwd samples/s (best round) | ratio to flatten | peak memory (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for h, n in names.items():
        params = sum(p.numel() for p in models[h].parameters()) / 1e6
        best, ratio = rates[h]
        print(
            f"| {n} | {h} | {params:.2f} | {best:.1f} | {ratio:.3f} | {memory[h] / 2**20:.0f} "
            f"({memory[h] / memory['flatten']:.3f}x) |"
        )
    print(
        f"[batch {args.batch}, {args.rounds} rounds x {args.steps} steps, {args.device}, {torch.get_num_threads()} "
        f"threads, {cpu_name() if args.device == 'cpu' else torch.cuda.get_device_name()}]"
    )


# --- train: engine vs insightface's loop ----------------------------------------------------------------------------


def main_train(args: argparse.Namespace) -> None:
    args.model, args.classes, args.identities, args.sample_rate = f"vitface_{args.size}", 10_000, 64, 1.0
    args.precision, args.workers, args.rec = "no", 0, None
    total = (args.rounds + 1) * args.steps
    trainer = Trainer(recipe(args, total, "synthetic"), Path("/tmp/facezoo_bench_vit"), progress=False)
    ref = InsightfaceReference(trainer, args)
    trainer._train_loop(args.steps, checkpoint_at_end=False)  # warm-up of each, not counted
    ref.steps(args.steps)
    ratios: List[float] = []
    for r in range(args.rounds):
        end = trainer.step + args.steps
        t_fz = timed(lambda end=end: trainer._train_loop(end, checkpoint_at_end=False))
        t_ref = timed(lambda: ref.steps(args.steps))
        ratios.append(t_ref / t_fz)
        n = args.steps * args.batch
        print(
            f"round {r + 1}: facezoo {n / t_fz:7.2f} samples/s   insightface {n / t_ref:7.2f}   ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"median ratio (facezoo / insightface samples/s) {statistics.median(ratios):.3f} (target >= 1.0)  "
        f"[vitface_{args.size}, batch {args.batch}, {torch.get_num_threads()} threads, {cpu_name()}]"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("heads", "train"), required=True)
    p.add_argument("--size", default=None, help="vitface size letter (heads: s, train: t)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.size = args.size or ("s" if args.part == "heads" else "t")
    args.drop_path = {"t": 0.1, "s": 0.1, "b": 0.1, "l": 0.05, "h": 0.1}[args.size]
    main_heads(args) if args.part == "heads" else main_train(args)


if __name__ == "__main__":
    main()
