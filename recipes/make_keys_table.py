"""Regenerate the key reference of recipes/README.md from the recipe schema (``facezoo.train.config``).

    python recipes/make_keys_table.py           # rewrite the generated block of recipes/README.md
    python recipes/make_keys_table.py --check   # exit 1 if the README is not what this script generates
    python recipes/make_keys_table.py --print   # print the block instead

Types and defaults are read from the pydantic models, so they cannot drift from the code. The meaning of each key
is ``NOTES`` below (what it does, and what insightface arcface_torch / the AdaFace code use where it matters); a key
without a note falls back to the schema's own description, and a note for a key that no longer exists is an error.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any, Dict, List, Type

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = HERE / "README.md"
sys.path.insert(0, str(HERE))  # recipes/readme_block.py, shared by the table scripts
from readme_block import ReadmeBlock  # noqa: E402

BLOCK = ReadmeBlock(README, "recipes/make_keys_table.py")
BEGIN, END = BLOCK.begin, BLOCK.end

SECTIONS = {
    "model": "the backbone",
    "data": "the training set, the batch, augmentation",
    "data.synthetic": "the built-in synthetic faces (`data.train: synthetic`)",
    "data.augment": "augmentation on the device (probabilities per image)",
    "loss": "the margin head and Partial FC",
    "optim": "the optimizer",
    "schedule": "the learning-rate schedule",
    "train": "the training loop, precision, checkpoints, logging",
    "eval": "verification during and after training",
    "export": "the exported model folder",
}

NOTES: Dict[str, str] = {
    # model
    "model.name": "timm model name. facezoo's are `iresnet{18,34,50,100,200}[_gap\\|_gwp\\|_gdc][_k7]`, "
    "`mobilefacenet[_large][_gwp\\|_gap]` and the other families (`facezoo models` lists them with their sizes); "
    "other timm models train too, their pooled "
    "features being the embedding. May be left out when `model.pretrained` is `hf-hub:` / "
    "`local-dir:` (their config.json names the architecture; `model.name` is then ignored).",
    "model.pretrained": "Start from these weights (fine-tuning): a pretrained tag (`iresnet100.adaface_webface12m`, "
    "`facezoo models --pretrained` lists them; `model.name` must be its architecture; the export's card names it "
    "as `base_model` and carries its license terms), `hf-hub:ORG/NAME`, `local-dir:PATH` (a folder with "
    "config.json + model.safetensors, e.g. a run's `export/`), or a checkpoint file "
    "(.safetensors / .pth / .pt / .ckpt; insightface `backbone.pth`, AdaFace `.ckpt` with "
    "`model.args.layout=adaface`, a facezoo `checkpoints/step_N/backbone.safetensors`) for the "
    "architecture of `model.name`. Only the backbone is loaded: the class centres are always new. "
    "null: random initialisation.",
    "model.embed_dim": "Embedding size E (insightface and AdaFace: 512). Passed to facezoo models; to `hf-hub:` / "
    "`local-dir:` and other timm models only when the recipe sets it.",
    "model.args": "Other `timm.create_model` keyword arguments, a mapping: `drop_rate` (dropout before the embedding "
    'layer; insightface 0, AdaFace 0.4), `layout` (`insightface` or `adaface`, AdaFace\'s "IR" '
    "variant), `global_pool` (`gwp_sigma` / `gwp_softmax`: a learnable GWP kernel for a GWP or GAP model), "
    "`widths`, `layers`, `img_size` (the input side; the training images are resized to the model's "
    "input size on the device). `embed_dim` and `num_classes` are refused here. Set one argument with "
    "`model.args.drop_rate=0.4`; `model.args={...}` replaces the whole mapping.",
    "model.channels_last": "Run the backbone in channels-last memory format (faster convolutions on recent GPUs); "
    "the same numbers up to floating-point rounding.",
    "model.compile": "`torch.compile` the backbone (the first steps are slow while it compiles).",
    "model.grad_checkpointing": "Recompute activations in the backward pass (timm's `set_grad_checkpointing`): less "
    "memory, more compute.",
    "model.freeze": "Module-name prefixes to keep frozen, e.g. `[conv1, bn1, prelu, layer1]` (IResNet's top-level "
    "modules: conv1 bn1 prelu layer1-layer4 bn2 pool dropout fc features). Frozen modules get no "
    "gradient and run in eval mode (BatchNorm statistics stay as loaded). A name that is not a module "
    "is an error that lists the valid ones.",
    # data
    "data.train": "The training set: `synthetic` (the built-in generator, `data.synthetic.*`), an insightface "
    "RecordIO `.rec` file or a folder with `train.rec` + `train.idx`, identity folders (one sub-folder "
    "of images per identity), or a Hugging Face dataset (a saved folder, a `.parquet` file, or a Hub id "
    "`ORG/NAME`). Streamed (iterable) datasets are refused: they cannot be sampled or resumed exactly.",
    "data.batch_size": "GLOBAL batch per optimizer step, over all processes and micro-batches: each process reads "
    "`batch_size / (processes x train.grad_accum)` images per micro-batch, and the value must "
    "divide evenly. insightface: 128 per GPU (x 8 GPUs = 1024); AdaFace: its `--batch_size` is "
    "already global.",
    "data.num_workers": "DataLoader worker processes per training process (decoding). Throughput only: the sample "
    "order and the augmentation do not depend on it. insightface 2, AdaFace 16.",
    "data.on_error": "An unreadable image: `raise` stops with an error naming the file and record; `skip` replaces it "
    "with the next readable one, counts and logs it (many in a row still stop the run); the skips of every data "
    "worker and process are summed and reported once at the end (log, TensorBoard `data/skipped_records`, "
    "`eval.json`).",
    "data.num_classes": "Class count to use instead of the one the source reports (labels must be 0..N-1).",
    "data.synthetic.identities": "Number of synthetic identities (classes).",
    "data.synthetic.images_per_identity": "Images per synthetic identity.",
    "data.synthetic.difficulty": "Scales every nuisance of the synthetic faces (alignment error, lighting, colour "
    "cast, clutter, ...); 0 = none.",
    "data.synthetic.seed": "Seed of the synthetic faces (and of the held-out `synthetic` verification pairs).",
    "data.synthetic.cache": "Render the synthetic set once into memory at the model's input size (else render every "
    "image in the data workers each epoch).",
    "data.augment.flip": "Horizontal flip probability (insightface and AdaFace: 0.5).",
    "data.augment.crop": "AdaFace's crop-and-pad probability: keep a random rectangle (20-100% of the area, aspect "
    "3/4-4/3) in place and zero the rest. AdaFace's scripts: 0.2; insightface: 0.",
    "data.augment.low_res": "AdaFace's low-resolution probability: shrink to 20-100% of the side and enlarge back, "
    "with random interpolations. AdaFace's scripts: 0.2; insightface: 0.",
    "data.augment.photometric": "AdaFace's photometric probability: brightness, contrast and saturation jitter "
    "(factors in [0.5, 1.5]). AdaFace's scripts: 0.2; insightface: 0.",
    # loss
    "loss.name": "Margin head: `arcface` (cos(theta + m)), `cosface` (cos(theta) - m), `combined` (insightface's "
    "CombinedMarginLoss, cos(m1 theta + m2) - m3), `adaface`, `curricularface`, `magface`. insightface's "
    "WebFace configs: `combined` (1, 0, 0.4); AdaFace: `adaface`.",
    "loss.s": "Scale of the logits (insightface and AdaFace: 64).",
    "loss.m": "The head's margin (`arcface`: radians; `cosface`: cosine; `adaface`: its m, 0.4). null: the head's "
    "default. `combined` takes `m1`, `m2`, `m3` in `loss.args` instead.",
    "loss.args": "The head's other arguments, a mapping checked against its signature (a wrong name is an error with "
    "a suggestion): `combined`: `m1`, `m2`, `m3`, `straight_through` (default true: insightface's "
    "gradient, which skips the derivative of the angular margin), `overflow` (`wrap`, `threshold`, "
    "`easy`), `interclass_filtering_threshold`; `arcface`: `straight_through`, `overflow`; `adaface`: `h` "
    "(0.333), `t_alpha` (0.01), `eps`.",
    "loss.sample_rate": "Partial FC: the share of each process's class centres used per step (every class of the "
    "batch is always kept, plus random others). 1.0 = every centre (insightface's WebFace4M "
    "configs); insightface uses 0.2-0.3 for WebFace42M.",
    "loss.center_init": "How the class centres start: `normal`, N(0, 0.01) (insightface), or `unit`, uniform(-1, 1) "
    "rows scaled to norm 1 (AdaFace). Drawn in blocks seeded by `train.seed`, so the start does "
    "not depend on the number of processes.",
    # optim
    "optim.name": "`sgd` (insightface, AdaFace) or `adamw` (insightface's AdamW variant uses lr 1e-3, weight decay "
    "0.1). Parameter groups: the backbone (plus its BatchNorm parameters apart with "
    "`no_weight_decay_on_bn`), then the class centres last, as insightface.",
    "optim.lr": "Peak learning rate of the class centres (the backbone's is `lr x backbone_lr_scale`); the schedule "
    "multiplies it. Not scaled by batch size or process count. insightface and AdaFace: 0.1 (SGD).",
    "optim.momentum": "SGD momentum (insightface and AdaFace: 0.9). Not used by AdamW.",
    "optim.weight_decay": "Weight decay (insightface and AdaFace: 5e-4), on every parameter unless "
    "`no_weight_decay_on_bn` is set; the class centres are decayed too.",
    "optim.betas": "AdamW betas. Not used by SGD.",
    "optim.no_weight_decay_on_bn": "No weight decay on the parameters of BatchNorm layers (AdaFace: true; "
    "insightface: false, one decay for all).",
    "optim.backbone_lr_scale": "Backbone learning rate = `lr` x this, e.g. 0.1 to fine-tune a pretrained backbone "
    "while new class centres learn at `lr`.",
    "optim.clip_grad_norm": "Clip the backbone's gradient norm (after fp16 unscaling) to this value; the class "
    "centres are never clipped. null: no clipping. insightface: 5; AdaFace: none. The norm "
    "before clipping is logged as `grad_norm` either way.",
    # schedule
    "schedule.name": "`polynomial` (insightface: linear warmup, then `(1 - progress) ** power`, per step), "
    "`multistep` (AdaFace: `x gamma` at each milestone epoch, constant within an epoch), `cosine` "
    "(warmup, then half a cosine to `min_lr`), `constant` (warmup, then `lr`).",
    "schedule.warmup_epochs": "Linear warmup from 0, in epochs (fractions allowed; rounded to steps). insightface's "
    "WebFace4M configs: 0; its WebFace42M configs: a tenth of the epochs. AdaFace: 0.",
    "schedule.power": "`polynomial` only: the decay power (current insightface: 1 = linear to 0; its older "
    "PolyScheduler: 2).",
    "schedule.milestones": "`multistep` only: epochs (0-based, counted in steps) from which the rate is multiplied "
    "by `gamma` once more. AdaFace: [12, 20, 24].",
    "schedule.gamma": "`multistep` only: the factor at each milestone (AdaFace: 0.1).",
    "schedule.min_lr": "`cosine` only: the final learning rate.",
    # train
    "train.epochs": "Passes over `data.train`; without `max_steps` the run is `epochs x floor(images / batch_size)` "
    "steps. Also the unit of the schedule (warmup, milestones).",
    "train.max_steps": "Train this many optimizer steps instead; the schedule (warmup, decay, milestones) is laid out "
    'over them, one schedule "epoch" being `max_steps / epochs` steps (the data still goes '
    "through whole shuffled epochs). null: `epochs` decides.",
    "train.grad_accum": "Micro-batches per optimizer step: the same global batch in smaller pieces, for memory "
    "(gradients are synchronised once per step).",
    "train.mixed_precision": '`"no"`, `fp16` (autocast + a dynamic loss scale that every process agrees on: '
    'insightface\'s fp16) or `bf16` (no scaling). Quote "no" (in YAML and in overrides: '
    "`'train.mixed_precision=\"no\"'`): unquoted, YAML reads it as false.",
    "train.checkpoint_every": "Steps between checkpoints; 0: only at epoch ends and at the end (insightface "
    "checkpoints at epoch ends). A SIGTERM / Ctrl-C also writes one.",
    "train.keep_last": "Complete checkpoints kept; older ones are deleted after a new one is in place.",
    "train.seed": "Seed of everything random: the model and class-centre initialisation, the sample order "
    "(a permutation per `(seed, epoch)`), the augmentation draws (a hash of seed, epoch and sample), "
    "each process's dropout / Partial FC sampling. insightface: 2048; AdaFace: 42.",
    "train.max_bad_steps": "Stop after this many non-finite steps in a row (each is skipped on every process, "
    "logged, and lowers the fp16 loss scale); the last good checkpoint stays.",
    "train.log_every": "Steps between log lines (loss, lr, grad_norm, images/s, loss scale) in `train.log` and "
    "TensorBoard.",
    "train.tensorboard": "Write TensorBoard logs to `<output-dir>/tensorboard` (needs the tensorboard package).",
    # eval
    "eval.targets": "Verification sets: `.bin` files, Hugging Face pair datasets, folders of them (every set found), "
    "or `synthetic` (held-out synthetic identities). One string is one target. The paper's: lfw, "
    "cfp_fp, agedb_30, calfw, cplfw. Loaded before training starts, so a wrong path fails at once.",
    "eval.every": "Steps between evaluations (0: only at the end); the final evaluation always runs. insightface: "
    "every 2000 steps; AdaFace: every epoch.",
    "eval.batch_size": "Images per evaluation batch and process.",
    "eval.flip": "Embedding = model(image) + model(mirrored image), insightface's protocol (and AdaFace's).",
    "eval.synthetic_pairs": "Number of pairs of the `synthetic` target.",
    # export
    "export.enabled": "At the end, write `<output-dir>/export/`: the model as safetensors with timm's config.json "
    "and a model card holding the final evaluation (loadable with "
    "`timm.create_model('local-dir:...', pretrained=True)`).",
    "export.datasets": "Training datasets named in the model card, e.g. `[WebFace4M]`.",
    "export.license": "Hub license id written into the model card (e.g. `apache-2.0`, `cc-by-nc-4.0`). null: the "
    "terms of what the weights were made from (`facezoo.hub.licenses`): `other` with a `license_name` and a line "
    "on the terms for the research face datasets in `export.datasets` (WebFace4M/12M/42M/260M, MS1M/V2/V3, "
    "Glint360K, CASIA-WebFace, VGGFace2: non-commercial research only), or for a registered pretrained tag in "
    "`model.pretrained`; `apache-2.0` (facezoo's license) for `data.train: synthetic`; `other` with a warning for "
    "an unknown dataset or base model.",
}


def _section_types() -> Dict[str, Type[Any]]:
    """Dotted section name -> its pydantic model, in schema order."""
    from pydantic import BaseModel

    from facezoo.train.config import Recipe

    out: Dict[str, Type[Any]] = {}

    def walk(model: Type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out[prefix + name] = ann
                walk(ann, f"{prefix}{name}.")

    walk(Recipe, "")
    return out


def _type_name(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(_type_name(a) for a in rest)
        return f"{inner} or null" if len(rest) < len(args) else inner
    if origin in (list, List):
        return f"list of {_type_name(args[0])}s" if args else "list"
    if origin in (dict, Dict):
        return "mapping"
    if origin in (tuple, typing.Tuple):
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    return {int: "int", float: "number", str: "string", bool: "bool"}.get(ann, getattr(ann, "__name__", str(ann)))


def _bounds(field: Any) -> str:
    parts = []
    for m in field.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{word} {v:g}" if isinstance(v, float) else f"{word} {v}")
    return ", ".join(parts)


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str) and v in ("no", "yes", "on", "off", "true", "false", "null"):
        return f'"{v}"'
    return str(v)


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return _yaml_value(field.default_factory())
    return _yaml_value(field.default)


def generate() -> str:
    from facezoo.train.config import recipe_keys

    keys = recipe_keys()
    stale = sorted(set(NOTES) - set(keys))
    if stale:
        raise SystemExit(f"make_keys_table.py: notes for keys the schema does not have: {', '.join(stale)}")
    sections = _section_types()
    lines = [BEGIN, ""]
    for section, model in sections.items():
        fields = {n: f for n, f in model.model_fields.items() if f"{section}.{n}" in keys}
        if not fields:
            continue
        lines += [
            f"### `{section}`: {SECTIONS.get(section, '')}".rstrip(": "),
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, field in fields.items():
            key = f"{section}.{name}"
            kind = _type_name(field.annotation)
            bounds = _bounds(field)
            kind = f"{kind} ({bounds})" if bounds else kind
            meaning = NOTES.get(key) or (field.description or "").strip() or "(undocumented in the schema)"
            lines.append(f"| `{key}` | {kind} | `{_default(field)}` | {meaning} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's facezoo when run as a plain script from anywhere
    sys.exit(BLOCK.main(generate, __doc__))
