"""``facezoo data``: convert between .rec / Hugging Face datasets / .bin, write synthetic sets, inspect sources."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _convert(args: argparse.Namespace) -> int:
    from facezoo.data.convert import convert

    info = convert(
        args.src,
        args.dst,
        format=args.hf_format,
        split=args.split,
        image_column=args.image_column,
        label_column=args.label_column,
        progress=not args.quiet,
        on_error=args.on_error,
    )
    print(json.dumps(info))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from facezoo.data.convert import write_synthetic

    info = write_synthetic(
        args.out,
        num_identities=args.identities,
        images_per_identity=args.per_identity,
        num_pairs=args.pairs,
        seed=args.seed,
        difficulty=args.difficulty,
        workers=args.workers,
        verify_name=args.name,
        progress=not args.quiet,
    )
    print(json.dumps(info))
    return 0


def _info(args: argparse.Namespace) -> int:
    from facezoo.data.describe import describe_source

    print(json.dumps(describe_source(args.path, split=args.split)))
    return 0


def register(subparsers: Any) -> None:
    """Add ``facezoo data {convert,synth,info}``."""
    data = subparsers.add_parser(
        "data",
        help="face data: convert formats, write synthetic sets, inspect",
        description="Convert between .rec, Hugging Face datasets and .bin; write synthetic "
        "training/verification sets; inspect a data source.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: data.error(f"choose a command: {', '.join(sub.choices)}"))

    c = sub.add_parser(
        "convert",
        help="convert .rec <-> Hugging Face dataset, .bin <-> HF pair dataset",
        description="SRC .rec (or folder with train.rec) -> DST Hugging Face dataset (Parquet shards in "
        "DST/data, or --hf-format arrow for save_to_disk); SRC .bin -> DST HF pair dataset; "
        "SRC HF pair dataset -> DST .bin; SRC identity folders (SRC/<identity>/<image>) or HF dataset "
        "(folder, .parquet, Hub id) -> DST folder with train.rec/train.idx/property. Image bytes are "
        "copied, not re-encoded; each training image is decoded once to check it. Identity folders keep "
        "the classes training sees: a sub-folder with no image files is not a class (logged with a count).",
    )
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument(
        "--hf-format",
        choices=["parquet", "arrow"],
        default=None,
        help="output format when writing a Hugging Face dataset (default parquet for .rec, arrow for .bin)",
    )
    c.add_argument("--split", default=None, help="split of a Hugging Face source with several")
    c.add_argument("--image-column", default=None, help="image column (default: the first Image feature)")
    c.add_argument("--label-column", default=None, help="label column (default: a ClassLabel or 'label'/'identity')")
    c.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="a bad record, or an unreadable or empty image: 'raise' (default) stops with its file and record, "
        "offset, row or path (exit 2, no half-written .rec); 'skip' leaves it out, logs it and counts it "
        "('skipped' in the output)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_convert)

    s = sub.add_parser(
        "synth",
        help="write a synthetic training .rec and verification .bin",
        description="Write OUT/train.rec, OUT/train.idx, OUT/property (SyntheticFaces as JPEG) and "
        "OUT/<name>.bin verification pairs from identities disjoint from training.",
    )
    s.add_argument("out")
    s.add_argument("--identities", type=int, default=1000, help="training identities (default 1000)")
    s.add_argument("--per-identity", type=int, default=20, help="images per identity (default 20)")
    s.add_argument("--pairs", type=int, default=3000, help="verification pairs, half positive (default 3000; 0: none)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--difficulty", type=float, default=1.0, help="nuisance strength (0 = clean, default 1)")
    s.add_argument("--workers", type=int, default=0, help="rendering processes (default 0: in this process)")
    s.add_argument("--name", default="synth_verify", help="verification file name (default synth_verify)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_synth)

    i = sub.add_parser(
        "info",
        help="print the size, classes and image shape of a data source or verification set",
        description="Print, as one JSON line, what PATH holds: a training source (.rec, identity "
        "folders, Hugging Face dataset or Hub id: images, classes, image shape) or a "
        "verification set (.bin or HF pair dataset: pairs, positives, image shape). Identity folders: "
        "a sub-folder with no image files is not a class (counted in empty_folders), as in training "
        "and data convert.",
    )
    i.add_argument("path")
    i.add_argument("--split", default=None, help="split of a Hugging Face dataset with several")
    i.set_defaults(func=_info)
