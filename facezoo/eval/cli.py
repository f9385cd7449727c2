"""``facezoo eval``: evaluate a model on verification sets and IJB-B/C, writing JSON, markdown and a ROC plot."""

from __future__ import annotations

import argparse
from typing import Any

from facezoo.errors import ConfigError


def register(subparsers: Any) -> None:
    from facezoo.eval.runner import IJB_MODES

    p = subparsers.add_parser(
        "eval",
        help="evaluate a model: LFW/CFP-FP/AgeDB-30/CALFW/CPLFW (.bin or HF pairs) and IJB-B/C",
        description="Extract flip-fused embeddings and run insightface's protocols. Writes results.json, "
        "results.md (the paper's table layout) and roc.png to --output-dir.",
    )
    p.add_argument(
        "model",
        help="a pretrained tag (e.g. iresnet100.adaface_webface12m: its weights), a timm model name (facezoo or "
        "not), hf-hub:ORG/NAME or local-dir:PATH",
    )
    p.add_argument(
        "--checkpoint", help="local weights (.safetensors, .pth / .pt state_dict, .ckpt) loaded through timm"
    )
    p.add_argument(
        "--pretrained", action="store_true", help="load timm's default pretrained weights for a plain model name"
    )
    p.add_argument(
        "--bins",
        metavar="DIR",
        help="folder with verification sets: NAME.bin, or NAME/ / NAME.parquet HF pair datasets",
    )
    p.add_argument(
        "--targets",
        metavar="NAMES",
        help="comma-separated sets under --bins, e.g. lfw,cfp_fp,agedb_30,calfw,cplfw (default: every set found there)",
    )
    p.add_argument("--ijb", metavar="ROOT", help="IJB release folder (ROOT/meta, ROOT/loose_crop)")
    p.add_argument("--ijb-target", default="IJBC", choices=("IJBB", "IJBC"), help="IJB set under --ijb")
    p.add_argument(
        "--ijb-modes",
        default="default",
        help=f"comma-separated IJB modes, of {','.join(IJB_MODES)} (default: insightface's defaults)",
    )
    p.add_argument("--ijb-1n", action="store_true", help="also run 1:N identification (needs the 1:N CSVs)")
    p.add_argument("--output-dir", default="eval_out", help="output folder (default: eval_out)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (IJB image alignment)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-flip", action="store_true", help="no flip TTA (verification and IJB)")
    p.add_argument("--nfolds", type=int, default=10)
    p.add_argument(
        "--accelerate",
        action="store_true",
        help="shard extraction over the processes of `accelerate launch` (multi-GPU)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _names(text: str) -> list:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from facezoo.eval import report, runner

    # the command line's own names in its messages; the library checks everything else
    if args.targets is not None and not args.bins:
        raise ConfigError("--targets names sets in --bins DIR; give --bins too")
    if not args.bins and not args.ijb:
        raise ConfigError("give --bins DIR (verification sets) and/or --ijb ROOT (an IJB-B/C release)")
    modes = _names(args.ijb_modes)
    unknown = [m for m in modes if m not in runner.IJB_MODES]
    if unknown:
        raise ConfigError(f"unknown --ijb-modes {unknown}; choose from {', '.join(runner.IJB_MODES)}")
    if args.batch_size < 1 or args.nfolds < 1:
        raise ConfigError("--batch-size and --nfolds must be >= 1")
    accelerator = None
    if args.accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator()
    elif args.device != "auto":
        try:
            runner.resolve_device(args.device)
        except ConfigError:
            raise ConfigError(f"--device {args.device!r} is not a device (auto, cpu, cuda, cuda:1, mps, ...)") from None
    results = runner.evaluate_model(
        args.model,
        bins=args.bins,
        targets=_names(args.targets) if args.targets else None,
        ijb=args.ijb,
        ijb_target=args.ijb_target,
        ijb_modes=modes,
        ijb_1n=args.ijb_1n,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        batch_size=args.batch_size,
        device=args.device,
        flip=not args.no_flip,
        nfolds=args.nfolds,
        num_workers=args.workers,
        accelerator=accelerator,
        progress=not args.quiet,
    )
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    paths = report.write_outputs(results, args.output_dir)
    print(report.markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
