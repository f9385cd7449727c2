"""``facezoo export hub|onnx`` and ``facezoo push``: publish a model folder with its card, ONNX, Hub uploads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional

from facezoo.errors import CheckpointError, ConfigError

_BYTES_PER_MIB = 2**20


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="timm model name (e.g. iresnet50_gwp_k7), a pretrained tag (e.g. iresnet100.adaface_webface12m), "
        "hf-hub:ORG/NAME or local-dir:PATH",
    )
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="weights to load: .safetensors, .pth / .pt state_dict, .ckpt (insightface, AdaFace, facezoo)",
    )
    p.add_argument(
        "--layout",
        choices=("insightface", "adaface"),
        help="architecture variant; 'adaface' for AdaFace / TFace / CVLface IR checkpoints",
    )
    p.add_argument("--embed-dim", type=int, metavar="N", help="embedding size (default: the model's, 512)")
    p.add_argument(
        "--global-pool",
        metavar="POOL",
        help="pooling the checkpoint was trained with, when not the model name's: e.g. gwp_sigma or gwp_softmax "
        "(learnable GWP kernels) for a _gwp model",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a model for publishing: a Hub folder with its model card (hub), or ONNX (onnx)",
        description="Export a face model: 'hub' writes model.safetensors, timm's config.json and a model card with "
        "the metrics of a facezoo eval run; 'onnx' writes an ONNX file checked against torch.",
    )
    formats = p.add_subparsers(dest="export_format", metavar="FORMAT")
    formats.required = True  # 'facezoo export' alone is a usage error

    h = formats.add_parser(
        "hub",
        help="model.safetensors + config.json + README.md (model card), loadable with timm",
        description="Write an export folder that loads with timm.create_model('local-dir:DIR', pretrained=True) "
        "and, once pushed, 'hf-hub:ORG/NAME'. The model card takes its metrics from facezoo eval's "
        "results.json; without --results it says the model is unevaluated.",
    )
    _add_model_args(h)
    h.add_argument("--results", metavar="JSON", help="results.json written by 'facezoo eval' (the card's metrics)")
    h.add_argument("--output", required=True, metavar="DIR", help="export folder to create")
    h.add_argument("--training", metavar="FILE", help="resolved training recipe (YAML or JSON) shown in the card")
    h.add_argument(
        "--base-model",
        metavar="ID",
        help="the model this one was fine-tuned from: a Hub id or a pretrained tag (arch.tag, whose license terms "
        "the card then carries)",
    )
    h.add_argument(
        "--dataset",
        action="append",
        dest="datasets",
        metavar="NAME",
        help="training dataset for the card (repeatable), e.g. --dataset WebFace4M, --dataset synthetic; it also "
        "decides the default license",
    )
    h.add_argument(
        "--license",
        metavar="ID",
        help="Hub license id of the weights (e.g. apache-2.0, cc-by-nc-4.0, other); default: the terms of the "
        "--dataset (else the --training recipe's data.train) and --base-model: 'other' for the research face "
        "datasets (non-commercial), apache-2.0 for synthetic faces, 'other' with a warning when unknown or unstated",
    )
    h.add_argument("--repo-id", metavar="ORG/NAME", help="Hub id the card names (facezoo push fills it in otherwise)")
    h.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output folder")
    h.set_defaults(func=run_export_hub)

    o = formats.add_parser(
        "onnx",
        help="ONNX file: input 'input' (RGB, normalized), output 'embedding', dynamic batch",
        description="Export to ONNX with the GWP kernel inside the graph, then check the file with onnx's checker "
        "and, where onnxruntime is installed, compare it with torch on a random batch.",
    )
    _add_model_args(o)
    o.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    o.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: torch's exporter's)")
    o.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input height and width (default 112 112; only GAP/GWP models take other sizes)",
    )
    o.add_argument("--no-check", action="store_true", help="skip the checker and the onnxruntime comparison")
    o.set_defaults(func=run_export_onnx)

    q = subparsers.add_parser(
        "push",
        help="upload export folders to the Hugging Face Hub (or --dry-run OUT)",
        description="Upload an export folder, a training run's export/, or every run under a folder "
        "(--repo-id-prefix) to Hub model repos. The token comes from HF_TOKEN or `hf auth login`.",
    )
    q.add_argument("path", metavar="PATH", help="export folder, training output folder, or folder of runs")
    q.add_argument("--repo-id", metavar="ORG/NAME", help="the repo for a single export")
    q.add_argument(
        "--repo-id-prefix", metavar="ORG/", help="one repo per run, named PREFIX + the run folder's name (e.g. my-org/)"
    )
    q.add_argument("--collection", metavar="TITLE", help="add the pushed repos to this Hub collection")
    q.add_argument("--private", action="store_true", help="create the repos private")
    q.add_argument("--revision", metavar="R", help="branch to push to (created when missing)")
    q.add_argument("--commit-message", metavar="M")
    q.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    q.add_argument(
        "--overwrite-card", action="store_true", help="replace a remote README.md that facezoo did not write"
    )
    q.add_argument(
        "--dry-run", metavar="OUT", help="write what would be uploaded to OUT (with push_plan.json) and contact nothing"
    )
    q.set_defaults(func=run_push)


def _model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    given = (("layout", args.layout), ("embed_dim", args.embed_dim), ("global_pool", args.global_pool))
    return {k: v for k, v in given if v is not None}


def _warn_if_random(args: argparse.Namespace) -> None:
    import logging

    if not args.checkpoint and not args.model.startswith(("hf-hub:", "local-dir:")):
        logging.getLogger(__name__).warning("%s: no --checkpoint: exporting randomly initialized weights", args.model)


def _create(args: argparse.Namespace):
    from facezoo.models import create_model

    try:
        return create_model(args.model, checkpoint=args.checkpoint, **_model_kwargs(args)).eval()
    except CheckpointError as exc:
        if not args.checkpoint or str(args.checkpoint) in str(exc):
            raise
        raise CheckpointError(f"{args.checkpoint}: {exc}") from None  # name the file the message is about


def read_recipe(path: str) -> Dict[str, Any]:
    """A training recipe file (YAML or JSON) as a dict."""
    import yaml

    from facezoo.errors import require_path

    p = require_path(path, "training recipe file (YAML or JSON)", kind="file")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: not YAML or JSON ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: a training recipe must be a mapping of settings, got {type(doc).__name__}")
    return doc


def run_export_hub(args: argparse.Namespace) -> int:
    from facezoo.hub import load_results, save_pretrained
    from facezoo.hub.export import WEIGHTS_NAME, check_output_folder
    from facezoo.hub.push import check_repo_id

    # the user's files first: a typo should not wait for the model
    results = load_results(args.results) if args.results else None
    training = read_recipe(args.training) if args.training else None
    if args.repo_id:
        check_repo_id(args.repo_id)
    check_output_folder(args.output, args.overwrite)
    model = _create(args)
    _warn_if_random(args)
    out = save_pretrained(
        model,
        args.output,
        results=results,
        training=training,
        base_model=args.base_model,
        datasets=args.datasets,
        license=args.license,
        overwrite=args.overwrite,
        repo_id=args.repo_id,
    )
    size = (out / WEIGHTS_NAME).stat().st_size / _BYTES_PER_MIB
    evaluated = f"metrics from {args.results}" if results else "unevaluated (no --results)"
    print(f"wrote {out}/: {WEIGHTS_NAME} ({size:.1f} MiB), config.json, README.md ({evaluated})")
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    from facezoo.export import export_onnx
    from facezoo.export.onnx import check_input_size, require_onnx

    require_onnx()  # before the model is built
    model = _create(args)
    check_input_size(model, args.input_size)
    _warn_if_random(args)
    info = export_onnx(model, args.output, opset=args.opset, input_size=args.input_size, check=not args.no_check)
    h, w = info["input_size"]
    print(
        f"wrote {info['path']}: opset {info['opset']}, input 'input' (batch, 3, {h}, {w}) RGB normalized, "
        f"output 'embedding', dynamic batch"
    )
    if args.no_check:
        return 0
    if info["onnxruntime"] is None:
        print("onnx checker: ok; onnxruntime is not installed, so outputs were not compared")
    else:
        print(
            f"onnx checker: ok; onnxruntime {info['onnxruntime']} vs torch on a random batch of {info['batch']}: "
            f"max abs diff {info['max_abs_diff']:.3g} (largest output {info['max_abs_output']:.3g})"
        )
    return 0


def run_push(args: argparse.Namespace) -> int:
    from facezoo.hub import push

    plan = push(
        args.path,
        args.repo_id,
        repo_id_prefix=args.repo_id_prefix,
        collection=args.collection,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        dry_run=args.dry_run,
        overwrite_card=args.overwrite_card,
    )
    for repo in plan["repos"]:
        size = sum(f["size"] for f in repo["files"]) / _BYTES_PER_MIB
        where: Optional[str] = repo.get("commit")
        if plan["dry_run"]:
            print(
                f"dry run: {repo['repo_id']} <- {repo['source']} ({len(repo['files'])} files, {size:.1f} MiB) "
                f"written to {Path(args.dry_run) / repo['folder']}"
            )
        else:
            print(f"pushed {repo['source']} to {repo['repo_id']} ({size:.1f} MiB): {where}")
    if plan["collection"]:
        print(
            f"collection {plan['collection']['title']!r}: {len(plan['repos'])} model(s)"
            + ("" if plan["dry_run"] else f" ({plan['collection'].get('slug')})")
        )
    if plan["dry_run"]:
        print(f"wrote {Path(args.dry_run) / 'push_plan.json'}; nothing was uploaded")
    return 0
