"""``facezoo models``: the registered face backbones with their size and compute; ``convert-checkpoint``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from facezoo.errors import UnknownNameError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the face backbones with parameters, linear-layer share and GFLOPs",
        description="List facezoo's timm models of every family (IResNet, MobileFaceNet, ...) with total parameters "
        "(insightface counting), linear-layer "
        "parameters and their share, and GFLOPs (2 x MACs) for one 112x112 image.",
        epilog="'facezoo models convert-checkpoint IN OUT.safetensors' writes the tensors of a training checkpoint "
        "(e.g. a Lightning .ckpt) to a safetensors file, loading it with torch.load(weights_only=True) only.",
    )
    p.add_argument(
        "patterns",
        nargs="*",
        metavar="PATTERN",
        help="only models matching these shell patterns, e.g. 'iresnet50*' 'mobilefacenet*' (default: all families)",
    )
    p.add_argument("--format", choices=("markdown", "json"), default="markdown", help="output format")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list the pretrained tags (architecture.tag) instead: source, training data, license and the "
        "accuracy their source reports; PATTERN matches tags, e.g. 'iresnet100*'",
    )
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from facezoo.models.profile import list_face_models, model_stats, stats_table_markdown

    if args.patterns[:1] == ["convert-checkpoint"]:
        return convert(args.patterns[1:])
    if args.pretrained:
        from facezoo.models.pretrained import print_pretrained

        return print_pretrained(args.patterns, args.format)
    names = list_face_models(args.patterns)
    if not names:
        raise UnknownNameError(
            f"no facezoo model matches {' '.join(args.patterns)!r}; 'facezoo models' lists them "
            "all (patterns are shell patterns, e.g. 'iresnet50*')"
        )
    rows = [model_stats(n) for n in names]
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(stats_table_markdown(rows))
    return 0


def convert(argv: list) -> int:
    """``facezoo models convert-checkpoint IN OUT.safetensors``."""
    from facezoo.cli import FacezooArgumentParser
    from facezoo.models.checkpoints import convert_checkpoint

    p = FacezooArgumentParser(
        prog="facezoo models convert-checkpoint",
        description="Write the tensors of a checkpoint's state_dict (a Lightning .ckpt's 'state_dict', keys kept as "
        "they are) to a safetensors file that timm and facezoo load without pickle. The input is read "
        "with torch.load(weights_only=True); Python objects that refuses are replaced by empty "
        "placeholders, never unpickled.",
    )
    p.add_argument("src", metavar="IN", help="checkpoint (.ckpt / .pth / .pt)")
    p.add_argument("dst", metavar="OUT", help="output file, must end in .safetensors")
    args = p.parse_args(list(argv))
    if not args.dst.endswith(".safetensors"):
        p.error(f"OUT must end in .safetensors, got {args.dst!r}")
    info = convert_checkpoint(args.src, args.dst)
    print(f"wrote {info['tensors']} tensors ({info['bytes'] / 2**20:.1f} MiB) to {args.dst}")
    if info["left_out"]:
        print(f"left out {info['left_out']} state_dict entries that are not tensors")
    if info["refused"]:
        print(f"not unpickled (replaced by placeholders, not in the output): {', '.join(info['refused'])}")
    return 0
