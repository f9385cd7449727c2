"""Is SyntheticFaces hard but learnable? Raw pixels and untrained CNNs vs the same CNN trained a few minutes on CPU.

All embed the same held-out verification pairs (identities disjoint from training). Accuracy is
``facezoo.eval.verification.evaluate`` (insightface: squared L2 of L2-normalized embeddings, thresholds 0..4 step
0.01, 10 contiguous folds); the "fine" column re-picks the threshold among every distinct distance (an optimistic
upper bound for baselines whose distances cluster inside one 0.01 step). Also measures rendering speed (images/s
on one core, CPU time) of ``render_face_chw``, what ``SyntheticFaces`` calls.

    python benchmarks/bench_synth_learnability.py [--steps 2000 | --steps 0 --minutes 4] \
        [--identities 1000] [--per-id 20]
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

from facezoo.data.synthetic import SyntheticFaces, render_face_chw, synthetic_pairs
from facezoo.eval.verification import evaluate

LR = 2e-3  # AdamW peak learning rate (cosine schedule)
SIZE = 64  # SmallFaceNet's input side: the 112x112 faces are resized to it for CPU speed


class SmallFaceNet(nn.Module):
    """A small CNN embedding (input 112x112, run at ``size`` x ``size`` for CPU speed)."""

    def __init__(self, dim: int = 128, width: int = 16, size: int = SIZE) -> None:
        super().__init__()
        w = width
        self.size = size

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.PReLU(cout),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.PReLU(cout),
            )

        self.body = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 8 * w))  # size / 16
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * w * ((size + 15) // 16) ** 2, dim), nn.BatchNorm1d(dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.body(x))


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - 0.5) / 0.5


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalize(images[i : i + batch])
        out.append(model(x) + model(torch.flip(x, dims=[3])))
    return F.normalize(torch.cat(out), dim=1)


def fine_accuracy(emb: torch.Tensor, issame: torch.Tensor, folds: int = 10) -> tuple[float, float]:
    """10 contiguous folds; threshold picked on 9 folds among every distinct similarity, applied to the 10th."""
    sim = (emb[0::2] * emb[1::2]).sum(1).numpy()
    same = issame.numpy()
    thresholds = np.unique(sim) - 1e-7  # every distinct decision, however tightly the similarities cluster
    n = len(sim)
    accs = []
    for k in range(folds):
        test = np.zeros(n, bool)
        test[k * n // folds : (k + 1) * n // folds] = True
        train_acc = [((sim[~test] > t) == same[~test]).mean() for t in thresholds]
        t = thresholds[int(np.argmax(train_acc))]
        accs.append(((sim[test] > t) == same[test]).mean())
    return float(np.mean(accs)), float(np.std(accs))


def render_speed(seconds: float = 3.0) -> float:
    for i in range(20):
        render_face_chw(0, i, 0)
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        render_face_chw(0, n % 500, n)
        n += 1
    return n / (time.process_time() - start)


def accuracies(emb: torch.Tensor, issame: torch.Tensor) -> tuple[float, float, float]:
    """(insightface 10-fold accuracy, its std over folds, fine-threshold accuracy)."""
    res = evaluate(emb, issame)
    return res["accuracy"], res["accuracy_std"], fine_accuracy(emb, issame)[0]


def load_all(ds: SyntheticFaces, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    steps: int,
    seconds: float,
    batch: int = 128,
    s: float = 30.0,
    m: float = 0.35,
) -> tuple[int, float]:
    """CosFace (normalized softmax with an additive cosine margin), AdamW, cosine LR, random flips.

    Runs ``steps`` steps (the cosine schedule follows the step count), or when ``steps`` is 0 for ``seconds`` of
    wall time (the schedule follows the clock). Returns (steps run, seconds taken)."""
    weight = nn.Parameter(torch.randn(num_classes, model.head[-2].out_features) * 0.01)
    opt = torch.optim.AdamW(list(model.parameters()) + [weight], lr=LR, weight_decay=5e-4)
    start = time.time()
    done = 0
    g = torch.Generator().manual_seed(0)
    model.train()
    while (done < steps) if steps else (time.time() - start < seconds):
        frac = done / steps if steps else (time.time() - start) / seconds
        for group in opt.param_groups:
            group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * frac))
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
        done += 1
        if done % 100 == 0:
            print(f"  step {done}  loss {loss.item():.3f}  {time.time() - start:.0f}s", flush=True)
    return done, time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps",
        type=int,
        default=2000,
        help="training steps of 128 images (~4 min on a quiet 2-core CPU; 0: use --minutes)",
    )
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget when --steps is 0")
    ap.add_argument("--identities", type=int, default=1000)
    ap.add_argument("--per-id", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=1200)
    ap.add_argument("--untrained-seeds", type=int, default=3, help="random initializations of the untrained CNN")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--width", type=int, default=16, help="SmallFaceNet base width")
    args = ap.parse_args()
    torch.manual_seed(0)

    speed = render_speed()
    print(f"render speed: {speed:.0f} images/s per core (CPU time)")
    t0 = time.time()
    images, labels = load_all(SyntheticFaces(args.identities, args.per_id, seed=0), args.workers)
    pair_images, issame = synthetic_pairs(args.pairs, seed=0)
    print(f"rendered {len(images)} training + {len(pair_images)} pair images in {time.time() - t0:.1f}s")

    rows = []
    x = normalize(pair_images).flatten(1)
    rows.append(("raw pixels (cosine)", accuracies(F.normalize(x, dim=1), issame)))
    rows.append(
        (
            "raw pixels, each image mean-centred (cosine)",
            accuracies(F.normalize(x - x.mean(1, keepdim=True), dim=1), issame),
        )
    )
    untrained = []
    for seed in range(args.untrained_seeds):
        torch.manual_seed(seed)
        untrained.append(accuracies(embed(SmallFaceNet(width=args.width, size=SIZE), pair_images), issame))
        rows.append((f"SmallFaceNet, untrained (init seed {seed})", untrained[-1]))
    torch.manual_seed(0)
    model = SmallFaceNet(width=args.width, size=SIZE)
    steps, secs = train(model, images, labels, args.identities, args.steps, args.minutes * 60)
    rows.append(
        (
            f"SmallFaceNet, trained {steps} steps of 128 ({secs / 60:.1f} min, {args.identities} ids x {args.per_id})",
            accuracies(embed(model, pair_images), issame),
        )
    )
    print()
    print(f"held-out pairs: {args.pairs} ({int(issame.sum())} positive), identities disjoint from training")
    print()
    print("| model | accuracy (insightface 10-fold) | fine-threshold accuracy |")
    print("|---|---|---|")
    for name, (acc, std, fine) in rows:
        print(f"| {name} | {acc:.4f} +- {std:.4f} | {fine:.4f} |")
    print(
        f"\nuntrained mean over {len(untrained)} inits: {np.mean([u[0] for u in untrained]):.4f} "
        f"(fine {np.mean([u[2] for u in untrained]):.4f})"
    )
    print(f"render speed {speed:.0f} images/s per core (target >= 1000: ratio {speed / 1000:.2f})")


if __name__ == "__main__":
    main()
