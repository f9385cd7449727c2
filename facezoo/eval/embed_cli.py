"""``facezoo embed``: the embeddings of every image of an aligned-face source, to a Parquet file."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed every image of a face source (folder, identity folders, .rec, HF dataset) to Parquet",
        description="Write one row per image of SOURCE to FILE.parquet: its path (folders) or index (.rec, Hugging "
        "Face datasets), its label when the source has one, and its embedding (float32 list). With flip TTA (the "
        "default, as 'facezoo eval') the embedding is f(img) + f(flip(img)). Under 'accelerate launch' each "
        "process embeds a shard and the main process joins them into FILE. The file reads with "
        "datasets.load_dataset('parquet', data_files=FILE).",
    )
    p.add_argument(
        "model",
        help="a pretrained tag (e.g. iresnet100.adaface_webface12m; 'facezoo models --pretrained' lists them), a "
        "timm name with --checkpoint, hf-hub:ORG/NAME or local-dir:PATH",
    )
    p.add_argument("source", help="aligned faces: a folder of images, a folder of identity folders, a .rec, or a "
                   "Hugging Face dataset (folder, .parquet, Hub id)")  # fmt: skip
    p.add_argument("--output", required=True, metavar="FILE.parquet", help="output file")
    p.add_argument(
        "--checkpoint", help="local weights (.safetensors, .pth / .pt state_dict, .ckpt) loaded through timm"
    )
    p.add_argument(
        "--pretrained", action="store_true", help="load timm's default pretrained weights for a plain model name"
    )
    p.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    p.add_argument("--no-flip", action="store_true", help="no flip TTA: the embedding is f(img) alone")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an unreadable image: stop with its path (raise, default) or leave it out and count it (skip)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from facezoo.eval.embed import embed_to_parquet

    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun: shard over processes
        import torch
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.device == "cpu" or not torch.cuda.is_available())
    info = embed_to_parquet(
        args.model,
        args.source,
        args.output,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        normalize=args.normalize,
        flip=not args.no_flip,
        batch_size=args.batch_size,
        device=args.device,
        on_error=args.on_error,
        num_workers=args.workers,
        accelerator=accelerator,
        progress=not args.quiet,
    )
    if accelerator is None or accelerator.is_main_process:
        skipped = f", {info['skipped']} unreadable images skipped" if info["skipped"] else ""
        print(f"wrote {info['rows']} embeddings ({info['dim']}-d) to {info['output']}{skipped}")
    return 0
