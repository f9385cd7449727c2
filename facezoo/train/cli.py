"""``facezoo train RECIPE [--output-dir DIR] [--resume latest|PATH] [key=value ...]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from facezoo.errors import ConfigError

EPILOG = """examples:
  facezoo train recipes/quickstart.yaml                                   # CPU, built-in synthetic faces
  facezoo train recipes/quickstart.yaml --output-dir runs/q --resume latest
  accelerate launch --multi_gpu --num_processes 8 -m facezoo train recipes/paper/arcface.yaml \\
      model.name=iresnet50_gwp_k7 data.train=/data/webface4m
  facezoo train recipes/finetune.yaml model.pretrained=hf-hub:ORG/NAME data.train=/data/my_faces

Every recipe key is documented in recipes/README.md; key=value overrides take YAML values
(0.1, true, null, [12, 20])."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a face model from a YAML recipe (one CPU to many GPUs and nodes)",
        description="Train a backbone with a margin loss and Partial FC on Accelerate. Works as a plain process and "
        "under `accelerate launch` / torchrun. Writes recipe.yaml, train.log, TensorBoard logs, "
        "summary.csv, checkpoints/step_<N>/, eval.json and export/ to --output-dir.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="recipe overrides, e.g. optim.lr=0.05")
    p.add_argument("--output-dir", help="run folder (default: runs/<recipe name>)")
    p.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue a run: 'latest' (the newest checkpoint in --output-dir whose manifest verifies; damaged "
        "newer ones are named and skipped; starts fresh when there is none) or a checkpoint folder "
        "checkpoints/step_<N>",
    )
    p.add_argument(
        "--stop-at-step",
        type=int,
        metavar="N",
        help="train up to step N of the schedule, write a checkpoint and exit (continue with --resume latest)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facezoo.train import TrainingInterrupted, load_recipe, train
    from facezoo.train.checkpoint import list_checkpoints

    overrides = [o for o in args.overrides]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(
            f"{bad[0]!r} is not a key=value override (e.g. optim.lr=0.05); options such as "
            "--output-dir go before or after them"
        )
    if args.stop_at_step is not None and args.stop_at_step < 1:
        raise ConfigError(f"--stop-at-step must be >= 1, got {args.stop_at_step}")
    recipe = load_recipe(args.recipe, overrides)
    output = Path(args.output_dir) if args.output_dir else Path("runs") / Path(args.recipe).stem
    if args.resume is None and list_checkpoints(output):
        raise ConfigError(
            f"{output} already holds a run with checkpoints; continue it with --resume latest, or "
            "choose another --output-dir (nothing is overwritten)"
        )
    try:
        train(recipe, output, resume=args.resume, progress=not args.quiet, stop_at=args.stop_at_step)
    except TrainingInterrupted as exc:
        print(f"facezoo train: {exc}", file=sys.stderr)
        return 128 + exc.signum
    return 0
