"""Training recipes: YAML validated into a typed config (pydantic), dotted ``key=value`` overrides, clear errors.

A recipe has the sections ``model``, ``data``, ``loss``, ``optim``, ``schedule``, ``train``, ``eval`` and
``export``; every key has a default, so a recipe only states what differs (``recipes/README.md`` documents each
key). An unknown or misspelled key is a :class:`facezoo.errors.ConfigError` that names it and suggests the closest
valid key; a wrong type names the key and the expected type.

    recipe = load_recipe("recipes/quickstart.yaml", ["optim.lr=0.05", "train.max_steps=100"])
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facezoo.errors import ConfigError, did_you_mean

__all__ = [
    "Recipe",
    "load_recipe",
    "recipe_from_dict",
    "apply_overrides",
    "recipe_keys",
    "save_recipe",
    "MARGINS",
    "check_loss_args",
    "check_micro_batch",
]

#: margin heads a recipe can name (``loss.name``), see ``facezoo.losses.create_margin_loss``
MARGINS = ("arcface", "cosface", "combined", "adaface", "curricularface", "magface")


def _check_arg_names(where: str, args: Dict[str, Any]) -> Dict[str, Any]:
    """Keyword-argument mappings must have names as keys: YAML's ``{a:1}`` (no space) is the key 'a:1'."""
    for key in args:
        if not str(key).isidentifier():
            raise ValueError(
                f"{where}: {key!r} is not an argument name; in YAML write 'name: value' with a space "
                "after the colon, e.g. {widths: [16, 32, 64, 128], img_size: 64}"
            )
    return args


class Section(BaseModel):
    """A recipe section: unknown keys are errors, values are validated on assignment too, and numbers must be
    finite (an infinite or NaN learning rate, scale or schedule value cannot train)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    name: Optional[str] = Field(
        None,
        description="timm model name, e.g. iresnet50_gwp_k7; optional when "
        "model.pretrained is hf-hub:/local-dir: (their config names it)",
    )
    pretrained: Optional[str] = Field(
        None,
        description="start from these weights: a pretrained tag (iresnet100.adaface_webface12m), hf-hub:ORG/NAME, "
        "local-dir:PATH or a checkpoint file (.safetensors/.pth/.ckpt) for model.name",
    )
    embed_dim: int = Field(512, ge=1, description="embedding size")
    args: Dict[str, Any] = Field(
        default_factory=dict,
        description="other timm.create_model kwargs (drop_rate, layout, widths, layers, img_size, ...)",
    )
    channels_last: bool = True
    compile: bool = False
    grad_checkpointing: bool = False
    freeze: List[str] = Field(
        default_factory=list, description="module-name prefixes kept frozen, e.g. [conv1, bn1, prelu, layer1]"
    )

    @field_validator("args")
    @classmethod
    def _names(cls, v: Dict[str, Any]) -> Dict[str, Any]:
        return _check_arg_names("model.args", v)


class SyntheticConfig(Section):
    identities: int = Field(1000, ge=2)
    images_per_identity: int = Field(20, ge=1)
    difficulty: float = Field(1.0, ge=0)
    seed: int = 0
    cache: bool = Field(
        True,
        description="render once into memory at the model's input size (else render every epoch in the data workers)",
    )


class AugmentConfig(Section):
    flip: float = Field(0.5, ge=0, le=1)
    crop: float = Field(0.0, ge=0, le=1, description="AdaFace crop-and-pad probability")
    low_res: float = Field(0.0, ge=0, le=1, description="AdaFace low-resolution probability")
    photometric: float = Field(0.0, ge=0, le=1, description="AdaFace brightness/contrast/saturation probability")


class DataConfig(Section):
    train: str = Field(
        "synthetic",
        description="synthetic, a .rec file or folder, identity folders, a Hugging "
        "Face dataset folder/.parquet or Hub id ORG/NAME",
    )
    batch_size: int = Field(
        128,
        ge=1,
        description="GLOBAL batch per optimizer step, split evenly over processes "
        "(and over train.grad_accum micro-batches)",
    )
    num_workers: int = Field(2, ge=0)
    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="an unreadable sample stops the run (raise) or is replaced by the next readable one (skip); "
        "skips are summed over data workers and processes and reported once at the end",
    )
    num_classes: Optional[int] = Field(None, ge=1, description="override the class count the source reports")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class LossConfig(Section):
    name: Literal[MARGINS] = "arcface"  # type: ignore[valid-type]
    s: float = Field(64.0, gt=0, description="scale")
    m: Optional[float] = Field(None, description="margin (the head's default when null; combined uses args m1/m2/m3)")
    args: Dict[str, Any] = Field(
        default_factory=dict,
        description="other head arguments: m1, m2, m3 (combined), h, "
        "t_alpha (adaface), straight_through, overflow, ...",
    )
    sample_rate: float = Field(1.0, gt=0, le=1, description="Partial FC: share of the class centres used per step")
    center_init: Literal["normal", "unit"] = Field(
        "normal", description="class centres: N(0, 0.01) (insightface) or unit-norm rows (AdaFace)"
    )

    @field_validator("args")
    @classmethod
    def _names(cls, v: Dict[str, Any]) -> Dict[str, Any]:
        return _check_arg_names("loss.args", v)

    @model_validator(mode="after")
    def _check_args(self) -> LossConfig:
        check_loss_args(self.name, self.s, self.m, self.args)
        return self


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    betas: Tuple[float, float] = (0.9, 0.999)
    no_weight_decay_on_bn: bool = Field(False, description="AdaFace: no weight decay on BatchNorm parameters")
    backbone_lr_scale: float = Field(1.0, gt=0, description="backbone LR = lr x this (e.g. 0.1 to fine-tune)")
    clip_grad_norm: Optional[float] = Field(None, gt=0, description="clip the backbone's gradient norm (insightface 5)")


class ScheduleConfig(Section):
    name: Literal["polynomial", "multistep", "cosine", "constant"] = "polynomial"
    warmup_epochs: float = Field(0.0, ge=0)
    power: float = Field(1.0, gt=0, description="polynomial decay power (insightface: 1, linear)")
    milestones: List[float] = Field(default_factory=list, description="multistep: epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0, description="cosine: final learning rate")


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    max_steps: Optional[int] = Field(
        None, ge=1, description="train this many optimizer steps; schedules are laid out over them"
    )
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: epoch ends and the end only)")
    keep_last: int = Field(3, ge=1)
    seed: int = 0
    max_bad_steps: int = Field(20, ge=1, description="stop after this many non-finite steps in a row")
    log_every: int = Field(50, ge=1)
    tensorboard: bool = True

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False or v is None else v  # YAML reads a bare `no` as false


class EvalConfig(Section):
    targets: List[str] = Field(
        default_factory=list,
        description="verification sets: .bin files, HF pair datasets, folders of them, or 'synthetic' (held-out pairs)",
    )
    every: int = Field(0, ge=0, description="steps between evaluations (0: only at the end)")
    batch_size: int = Field(256, ge=1)
    flip: bool = True
    synthetic_pairs: int = Field(1000, ge=10)

    @field_validator("targets", mode="before")
    @classmethod
    def _one_target(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class ExportConfig(Section):
    enabled: bool = True
    datasets: List[str] = Field(default_factory=list, description="training datasets named in the model card")
    license: Optional[str] = None


class Recipe(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _check_model(self) -> Recipe:
        pre = self.model.pretrained or ""
        if self.model.name is None and not pre.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(
                "model.name is required (a timm model name such as iresnet50_gwp_k7) unless "
                "model.pretrained is an hf-hub: or local-dir: id, whose config names the architecture"
            )
        return self


# --- keys and errors -------------------------------------------------------------------------------------------------


def recipe_keys(section: Type[BaseModel] = Recipe, prefix: str = "") -> List[str]:
    """Every valid dotted key, e.g. ``['model.name', ..., 'data.synthetic.identities', ...]``."""
    keys = []
    for name, field in section.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += recipe_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _children(parent: str) -> List[str]:
    """The keys directly under the dotted section ``parent`` ('' = the top level)."""
    section: Type[BaseModel] = Recipe
    for part in [p for p in parent.split(".") if p]:
        field = section.model_fields.get(part)
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        section = ann
    return list(section.model_fields)


def _describe_expected(err: Mapping[str, Any]) -> str:
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}"
    simple = {
        "int_parsing": "an integer",
        "int_from_float": "an integer",
        "int_type": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "finite_number": "a finite number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a mapping (key: value)",
        "tuple_type": "a list of 2 numbers",
        "model_type": "a section",
    }
    if kind in simple:
        return simple[kind]
    for bound, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if bound in ctx:
            return f"a value {word} {ctx[bound]}"
    return err.get("msg", "a valid value")


def _config_error(exc: ValidationError, where: str) -> ConfigError:
    """The first problem of a pydantic ValidationError as one line naming the dotted key."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    key = ".".join(loc)
    if err.get("type") == "extra_forbidden":
        parent = ".".join(loc[:-1])
        siblings = _children(parent)
        near = did_you_mean(loc[-1], siblings, n=1)
        if near and parent:
            near = near.replace("'", f"'{parent}.", 1)
        listing = "" if near else f" (valid keys under {parent or 'the top level'}: {', '.join(siblings)})"
        return ConfigError(f"{where}: unknown key {key!r}{near}{listing}")
    if not key or err.get("type") == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        return ConfigError(f"{where}: {key + ': ' if key and not msg.startswith(key) else ''}{msg}")
    given = err.get("input")
    shown = f" {given!r}" if not isinstance(given, (dict, BaseModel)) else ""
    hint = ""
    if err.get("type") == "literal_error" and isinstance(given, str):
        expected = str((err.get("ctx") or {}).get("expected", "")).replace(" or ", ", ")
        choices = [c.strip(" '") for c in expected.split(",")]
        hint = did_you_mean(given, choices)
    return ConfigError(f"{where}: {key} must be {_describe_expected(err)}, got{shown}{hint}")


def check_loss_args(name: str, s: float, m: Optional[float], args: Mapping[str, Any]) -> None:
    """Refuse loss arguments the head does not take (naming the closest ones) before anything is built."""
    from facezoo.losses.factory import MARGIN_LOSSES

    cls = MARGIN_LOSSES[name]
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "process_group")]
    given = dict(args)
    if m is not None:
        if "m" not in params:
            raise ValueError(f"loss.m is not an argument of {name} (it takes {', '.join(params)}; use loss.args)")
        given["m"] = m
    for key in given:
        if key in ("s",):
            raise ValueError("loss.args.s: give the scale as loss.s")
        if key not in params:
            raise ValueError(
                f"loss.args.{key} is not an argument of {name}{did_you_mean(key, params)} "
                f"(it takes {', '.join(params)})"
            )


def check_micro_batch(global_batch: int, grad_accum: int, world_size: int) -> None:
    """Refuse a per-process micro-batch of one image for a backbone with BatchNorm in training: BatchNorm needs at
    least two values per channel (the embedding's BatchNorm1d fails on one; a 2-d one would learn from noise)."""
    local = global_batch // (grad_accum * world_size)
    if local < 2:
        raise ConfigError(
            f"data.batch_size {global_batch} gives {local} image per process and micro-batch ({global_batch} / "
            f"({world_size} process(es) x {grad_accum} micro-batch(es), train.grad_accum)); the backbone's "
            f"BatchNorm needs at least 2 in training: use data.batch_size >= {2 * grad_accum * world_size}"
        )


# --- loading -------------------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """An override's value as YAML (``0.1``, ``true``, ``null``, ``[12, 20]``); plain text stays a string."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """A copy of ``raw`` with dotted ``key=value`` overrides set (nested sections created as needed)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=0.05 or train.max_steps=100)")
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return out


def recipe_from_dict(raw: Mapping[str, Any], where: str = "recipe") -> Recipe:
    """Validate a plain dict into a :class:`Recipe` (errors name ``where`` and the dotted key)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of sections (model:, data:, ...), got {type(raw).__name__}")
    try:
        return Recipe.model_validate(dict(raw))
    except ValidationError as exc:
        raise _config_error(exc, where) from None


def _recipe_hint(p: Path) -> str:
    """A suggestion for a missing recipe: the closest YAML file beside it (``quickstart.yml`` -> ``.yaml``)."""
    if p.parent.is_dir():
        names = sorted(f.name for f in p.parent.iterdir() if f.suffix in (".yaml", ".yml"))
        close = difflib.get_close_matches(p.name, names, n=1, cutoff=0.6)
        if close:
            return f"; did you mean {str(p.with_name(close[0]))!r}?"
    return "" if p.suffix in (".yaml", ".yml") else " (recipes are .yaml files, e.g. recipes/quickstart.yaml)"


def load_recipe(path: Optional[Union[str, os.PathLike]], overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (``None``: all defaults), apply ``key=value`` overrides, validate."""
    raw: Any = {}
    where = "overrides"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{path}: no such recipe file{_recipe_hint(p)}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{line} not valid YAML ({getattr(exc, 'problem', exc)})") from None
        where = str(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (model:, data:, ...), got {type(raw).__name__}")
    if overrides and path is not None:
        where = f"{where} (with overrides)"
    return recipe_from_dict(apply_overrides(raw, overrides), where)


def save_recipe(recipe: Recipe, path: Union[str, os.PathLike]) -> None:
    """Write the resolved recipe (every key, defaults included) as YAML, atomically."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None))
    os.replace(tmp, p)
