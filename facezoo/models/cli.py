"""``facezoo models``: the registered face backbones with their size and compute."""
from __future__ import annotations

import argparse
import json
import sys

from facezoo.models.profile import list_face_models, model_stats, stats_table_markdown


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the face backbones with parameters, linear-layer share and GFLOPs",
        description="List facezoo's timm models with total parameters (insightface counting), linear-layer "
                    "parameters and their share, and GFLOPs (2 x MACs) for one 112x112 image.",
    )
    p.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="only models matching these shell patterns, e.g. 'iresnet50*' (default: all)")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown", help="output format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = list_face_models(args.patterns)
    if not names:
        print(f"no facezoo model matches {' '.join(args.patterns)!r}; try 'facezoo models' for the list",
              file=sys.stderr)
        return 1
    rows = [model_stats(n) for n in names]
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(stats_table_markdown(rows))
    return 0
