"""The ``facezoo`` command line: one sub-command group per concern.

Each concern owns a small ``cli`` module exposing ``register(subparsers)``, which adds its sub-command(s) and
sets ``func`` on the parser; this file only wires them together, so ``facezoo --help`` lists them all.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "facezoo.models.cli",   # facezoo models
    "facezoo.data.cli",     # facezoo data {convert,synth,...}
    "facezoo.eval.cli",     # facezoo eval
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facezoo",
        description="Face-recognition models, data and evaluation on top of timm.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
