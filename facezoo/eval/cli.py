"""``facezoo eval``: evaluate a model on verification sets and IJB-B/C, writing JSON, markdown and a ROC plot."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from facezoo.eval.roc import DEFAULT_FARS

IJB_MODES = ("default", "no_flip", "no_faceness", "image_l2")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model: LFW/CFP-FP/AgeDB-30/CALFW/CPLFW (.bin or HF pairs) and IJB-B/C",
        description="Extract flip-fused embeddings and run insightface's protocols. Writes results.json, "
                    "results.md (the paper's table layout) and roc.png to --out.")
    p.add_argument("model", help="timm model name (facezoo or not), hf-hub:ORG/NAME or local-dir:PATH")
    p.add_argument("--checkpoint", help="local weights (.safetensors or .pth state_dict) loaded through timm")
    p.add_argument("--pretrained", action="store_true",
                   help="load timm's default pretrained weights for a plain model name")
    p.add_argument("--bins", help="folder with verification sets: NAME.bin, or NAME/ / NAME.parquet HF pair datasets")
    p.add_argument("--targets", default="lfw,cfp_fp,agedb_30,calfw,cplfw",
                   help="comma-separated verification sets under --bins (default: the paper's five)")
    p.add_argument("--ijb", metavar="ROOT", help="IJB release folder (ROOT/meta, ROOT/loose_crop)")
    p.add_argument("--target", default="IJBC", choices=("IJBB", "IJBC"), help="IJB set under --ijb")
    p.add_argument("--ijb-modes", default="default",
                   help=f"comma-separated IJB modes, of {','.join(IJB_MODES)} (default: insightface's defaults)")
    p.add_argument("--ijb-1n", action="store_true", help="also run 1:N identification (needs the 1:N CSVs)")
    p.add_argument("--out", default="eval_out", help="output folder (default: eval_out)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for IJB image alignment")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-flip", action="store_true", help="verification without flip TTA")
    p.add_argument("--nfolds", type=int, default=10)
    p.add_argument("--accelerate", action="store_true",
                   help="shard extraction over the processes of `accelerate launch` (multi-GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from facezoo.eval import report, runner

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.bins and not args.ijb:
        raise SystemExit("facezoo eval: give --bins DIR and/or --ijb ROOT")
    modes = [m.strip() for m in args.ijb_modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in IJB_MODES]
    if bad:
        raise SystemExit(f"facezoo eval: unknown --ijb-modes {bad}; choose from {list(IJB_MODES)}")
    accelerator = None
    if args.accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator()
        device = accelerator.device
    elif args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    model = runner.load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, device=device)
    progress = not args.quiet
    ver = ijb = None
    if args.bins:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        sets = runner.load_verification_sets(args.bins, targets, progress=progress)
        ver = runner.run_verification_sets(model, sets, args.batch_size, device, flip=not args.no_flip,
                                           nfolds=args.nfolds, accelerator=accelerator, progress=progress)
    if args.ijb:
        ijb = runner.run_ijb(model, args.ijb, args.target, args.batch_size, device, fars=DEFAULT_FARS, modes=modes,
                             one_to_n=args.ijb_1n, accelerator=accelerator, num_workers=args.workers,
                             progress=progress)
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    results = report.build_results(args.model, ver, ijb, extra={"checkpoint": args.checkpoint,
                                                                "flip": not args.no_flip, "nfolds": args.nfolds})
    paths = report.write_outputs(results, args.out)
    print(report.markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
