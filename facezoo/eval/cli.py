"""``facezoo eval``: evaluate a model on verification sets and IJB-B/C, writing JSON, markdown and a ROC plot."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from facezoo.errors import ConfigError

_logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    from facezoo.eval.runner import IJB_MODES

    p = subparsers.add_parser(
        "eval", help="evaluate a model: LFW/CFP-FP/AgeDB-30/CALFW/CPLFW (.bin or HF pairs) and IJB-B/C",
        description="Extract flip-fused embeddings and run insightface's protocols. Writes results.json, "
                    "results.md (the paper's table layout) and roc.png to --output-dir.")
    p.add_argument("model", help="timm model name (facezoo or not), hf-hub:ORG/NAME or local-dir:PATH")
    p.add_argument("--checkpoint",
                   help="local weights (.safetensors, .pth / .pt state_dict, .ckpt) loaded through timm")
    p.add_argument("--pretrained", action="store_true",
                   help="load timm's default pretrained weights for a plain model name")
    p.add_argument("--bins", metavar="DIR",
                   help="folder with verification sets: NAME.bin, or NAME/ / NAME.parquet HF pair datasets")
    p.add_argument("--targets", metavar="NAMES",
                   help="comma-separated sets under --bins, e.g. lfw,cfp_fp,agedb_30,calfw,cplfw (default: every set "
                        "found there)")
    p.add_argument("--ijb", metavar="ROOT", help="IJB release folder (ROOT/meta, ROOT/loose_crop)")
    p.add_argument("--ijb-target", default="IJBC", choices=("IJBB", "IJBC"), help="IJB set under --ijb")
    p.add_argument("--ijb-modes", default="default",
                   help=f"comma-separated IJB modes, of {','.join(IJB_MODES)} (default: insightface's defaults)")
    p.add_argument("--ijb-1n", action="store_true", help="also run 1:N identification (needs the 1:N CSVs)")
    p.add_argument("--output-dir", default="eval_out", help="output folder (default: eval_out)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (IJB image alignment)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-flip", action="store_true", help="no flip TTA (verification and IJB)")
    p.add_argument("--nfolds", type=int, default=10)
    p.add_argument("--accelerate", action="store_true",
                   help="shard extraction over the processes of `accelerate launch` (multi-GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _names(text: str) -> list:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    import torch

    from facezoo.eval import report, runner
    from facezoo.models import create_model
    from facezoo.models.checkpoints import check_checkpoint_file
    from facezoo.models.factory import check_model_name

    if not args.bins and not args.ijb:
        raise ConfigError("give --bins DIR (verification sets) and/or --ijb ROOT (an IJB-B/C release)")
    if args.targets is not None and not args.bins:
        raise ConfigError("--targets names sets in --bins DIR; give --bins too")
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
        device = accelerator.device
    elif args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise ConfigError(f"--device {args.device!r} is not a device (auto, cpu, cuda, cuda:1, mps, ...)") from None
    # check names and paths first: a typo should not wait for data loading or the model
    if args.checkpoint is not None:
        check_checkpoint_file(args.checkpoint)
    if not args.model.startswith(("hf-hub:", "local-dir:")):
        check_model_name(args.model)
    sets = runner.load_verification_sets(args.bins, _names(args.targets) if args.targets else None,
                                         progress=not args.quiet) if args.bins else None
    if args.ijb:
        from facezoo.errors import require_path

        require_path(args.ijb, f"IJB release folder ({args.ijb_target})", kind="dir")
    pretrained = args.pretrained or args.checkpoint is not None or args.model.startswith(("hf-hub:", "local-dir:"))
    if not pretrained:
        _logger.warning("%s: no --checkpoint and not --pretrained: evaluating randomly initialized weights",
                        args.model)
    model = create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, num_classes=0,
                         device=device).eval()
    progress = not args.quiet
    ver = ijb = None
    if sets is not None:
        ver = runner.run_verification_sets(model, sets, args.batch_size, device, flip=not args.no_flip,
                                           nfolds=args.nfolds, accelerator=accelerator, progress=progress)
    if args.ijb:
        ijb = runner.run_ijb(model, args.ijb, args.ijb_target, args.batch_size, device, flip=not args.no_flip,
                             modes=modes, one_to_n=args.ijb_1n, accelerator=accelerator, num_workers=args.workers,
                             progress=progress)
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    results = report.build_results(args.model, ver, ijb, extra={"checkpoint": args.checkpoint,
                                                                "flip": not args.no_flip, "nfolds": args.nfolds})
    paths = report.write_outputs(results, args.output_dir)
    print(report.markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
