"""Is SyntheticFaces hard but learnable? An untrained CNN vs the same CNN trained a few minutes on CPU.

Both embed held-out verification pairs (identities disjoint from training); accuracy is the standard 10-fold
best-threshold protocol on cosine similarity. Also measures rendering speed (images/s on one core).

    python benchmarks/bench_synth_learnability.py [--minutes 3] [--identities 400] [--per-id 24]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from facezoo.data.synthetic import SyntheticFaces, render_face, synthetic_pairs


class SmallFaceNet(nn.Module):
    """A small CNN embedding (input 112x112, run at 56x56 for CPU speed)."""

    def __init__(self, dim: int = 128, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
                                 nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout))

        self.body = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 8 * w))  # 56 -> 4
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * w * 4 * 4, dim), nn.BatchNorm1d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(56, 56), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.body(x))


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - 0.5) / 0.5


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalize(images[i:i + batch])
        out.append(model(x) + model(torch.flip(x, dims=[3])))
    return F.normalize(torch.cat(out), dim=1)


def verification_accuracy(emb: torch.Tensor, issame: torch.Tensor, folds: int = 10) -> tuple[float, float]:
    """10 contiguous folds; threshold picked on 9 folds (best accuracy), applied to the 10th."""
    sim = (emb[0::2] * emb[1::2]).sum(1).numpy()
    same = issame.numpy()
    thresholds = np.unique(sim) - 1e-7  # every distinct decision, however tightly the similarities cluster
    n = len(sim)
    accs = []
    for k in range(folds):
        test = np.zeros(n, bool)
        test[k * n // folds:(k + 1) * n // folds] = True
        train_acc = [((sim[~test] > t) == same[~test]).mean() for t in thresholds]
        t = thresholds[int(np.argmax(train_acc))]
        accs.append(((sim[test] > t) == same[test]).mean())
    return float(np.mean(accs)), float(np.std(accs))


def render_speed(seconds: float = 3.0) -> float:
    for i in range(20):
        render_face(0, i, 0)
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        render_face(0, n % 500, n)
        n += 1
    return n / (time.process_time() - start)


def load_all(ds: SyntheticFaces, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, seconds: float,
          batch: int = 128, s: float = 30.0, m: float = 0.35) -> int:
    """CosFace (normalized softmax with an additive cosine margin), AdamW, cosine LR, random flips."""
    weight = nn.Parameter(torch.randn(num_classes, model.head[-2].out_features) * 0.01)
    opt = torch.optim.AdamW(list(model.parameters()) + [weight], lr=2e-3, weight_decay=5e-4)
    start = time.time()
    steps = 0
    g = torch.Generator().manual_seed(0)
    model.train()
    while time.time() - start < seconds:
        frac = (time.time() - start) / seconds
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * frac))
        idx = torch.randint(len(images), (batch,), generator=g)
        x = normalize(images[idx])
        flip = torch.rand(batch, generator=g) < 0.5
        x[flip] = x[flip].flip(3)
        y = labels[idx]
        cos = F.normalize(model(x)) @ F.normalize(weight).T
        logits = s * (cos - m * F.one_hot(y, num_classes))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if steps % 100 == 0:
            print(f"  step {steps}  loss {loss.item():.3f}  {time.time() - start:.0f}s", flush=True)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--identities", type=int, default=400)
    ap.add_argument("--per-id", type=int, default=24)
    ap.add_argument("--pairs", type=int, default=1200)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.manual_seed(0)

    speed = render_speed()
    print(f"render speed: {speed:.0f} images/s per core (CPU time)")
    t0 = time.time()
    images, labels = load_all(SyntheticFaces(args.identities, args.per_id, seed=0), args.workers)
    pair_images, issame = synthetic_pairs(args.pairs, seed=0)
    print(f"rendered {len(images)} training + {len(pair_images)} pair images in {time.time() - t0:.1f}s")

    raw = F.normalize(normalize(pair_images).flatten(1), dim=1)
    acc_pixels, _ = verification_accuracy(raw, issame)
    model = SmallFaceNet()
    acc0, std0 = verification_accuracy(embed(model, pair_images), issame)
    steps = train(model, images, labels, args.identities, args.minutes * 60)
    acc1, std1 = verification_accuracy(embed(model, pair_images), issame)
    print()
    print(f"| model | held-out pairs | verification accuracy (10-fold) |")
    print(f"|---|---|---|")
    print(f"| raw pixels (cosine) | {args.pairs} | {acc_pixels:.4f} |")
    print(f"| SmallFaceNet, untrained | {args.pairs} | {acc0:.4f} +- {std0:.4f} |")
    print(f"| SmallFaceNet, trained {args.minutes:g} min ({steps} steps of 128, {args.identities} ids x {args.per_id}) "
          f"| {args.pairs} | {acc1:.4f} +- {std1:.4f} |")
    print(f"\nrender speed {speed:.0f} images/s per core (target >= 1000: ratio {speed / 1000:.2f})")


if __name__ == "__main__":
    main()
