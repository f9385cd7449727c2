"""``facezoo models``: the registered face backbones with their size and compute.

``facezoo models convert-checkpoint IN OUT.safetensors`` extracts the weights of a training checkpoint (e.g. a
Lightning ``.ckpt`` whose hyper-parameters ``torch.load(weights_only=True)`` refuses) into a safetensors file.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from typing import Any, List, Sequence, Tuple

import torch

from facezoo.models.profile import list_face_models, model_stats, stats_table_markdown

CONVERT = "convert-checkpoint"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the face backbones with parameters, linear-layer share and GFLOPs",
        description="List facezoo's timm models with total parameters (insightface counting), linear-layer "
                    "parameters and their share, and GFLOPs (2 x MACs) for one 112x112 image.",
        epilog=f"'facezoo models {CONVERT} IN OUT.safetensors' writes the tensors of a training checkpoint (e.g. a "
               "Lightning .ckpt) to a safetensors file, loading it with torch.load(weights_only=True) only.",
    )
    p.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="only models matching these shell patterns, e.g. 'iresnet50*' (default: all)")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown", help="output format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.patterns[:1] == [CONVERT]:
        return convert_checkpoint(args.patterns[1:])
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


# --- convert-checkpoint -----------------------------------------------------------------------------------------------

class _Dropped(list):
    """Stands in for a pickled object that ``weights_only=True`` refuses (hyper-parameters, callback state).

    It takes any arguments and state and keeps none, so no code the checkpoint names is run: the restricted
    unpickler still calls only torch's allowlist and this class. (A ``list`` so that pickled list items can land.)
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Dropped":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass


def load_weights_only(path: str) -> Tuple[Any, List[str]]:
    """``torch.load(path, weights_only=True)``; objects of globals it refuses load as inert placeholders.

    Returns the checkpoint and the refused globals (empty when the plain load worked). Raises
    ``pickle.UnpicklingError`` when even that is not enough (e.g. a dict subclass holding items).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError:
        if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
            raise
        refused = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with torch.serialization.safe_globals([(_Dropped, name) for name in refused]):
        return torch.load(path, map_location="cpu", weights_only=True), refused


def convert_checkpoint(argv: Sequence[str]) -> int:
    """``facezoo models convert-checkpoint IN OUT.safetensors``: keep a checkpoint's tensors, in safetensors."""
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(
        prog=f"facezoo models {CONVERT}",
        description="Write the tensors of a checkpoint's state_dict (a Lightning .ckpt's 'state_dict', keys kept as "
                    "they are) to a safetensors file that timm and facezoo load without pickle. The input is read "
                    "with torch.load(weights_only=True); Python objects that refuses are replaced by empty "
                    "placeholders, never unpickled.")
    p.add_argument("src", metavar="IN", help="checkpoint (.ckpt / .pth / .pt)")
    p.add_argument("dst", metavar="OUT", help="output file, must end in .safetensors")
    args = p.parse_args(list(argv))
    if not args.dst.endswith(".safetensors"):
        p.error(f"OUT must end in .safetensors, got {args.dst!r}")
    try:
        ckpt, refused = load_weights_only(args.src)
    except (pickle.UnpicklingError, RuntimeError) as e:
        print(f"{args.src}: torch.load(weights_only=True) cannot read this checkpoint, and facezoo does not unpickle "
              f"anything else ({e}). Save the weights alone from the code that wrote it, e.g. "
              "torch.save(lightning_module.state_dict(), 'weights.pth'), and load or convert that file.",
              file=sys.stderr)
        return 1
    state_dict = ckpt
    for container in ("state_dict", "model"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(container), dict):
            state_dict = state_dict[container]
    if not isinstance(state_dict, dict):
        print(f"{args.src}: no state_dict in this checkpoint (got {type(state_dict).__name__})", file=sys.stderr)
        return 1
    tensors = {k: v.detach().clone().contiguous() for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        print(f"{args.src}: the state_dict holds no tensors", file=sys.stderr)
        return 1
    partial = f"{args.dst}.partial"
    save_file(tensors, partial)
    os.replace(partial, args.dst)  # atomic: OUT is either the whole file or untouched
    size = os.path.getsize(args.dst) / 2 ** 20
    print(f"wrote {len(tensors)} tensors ({size:.1f} MiB) to {args.dst}")
    if len(tensors) < len(state_dict):
        print(f"left out {len(state_dict) - len(tensors)} state_dict entries that are not tensors")
    if refused:
        print(f"not unpickled (replaced by placeholders, not in the output): {', '.join(refused)}")
    return 0
