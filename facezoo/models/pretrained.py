"""What a pretrained tag (``architecture.tag``, timm's naming) is: its source, data, loss, license and the accuracy
its source reports.

The weights themselves are found by timm from the pretrained cfg of each model file (``hf_hub_id`` /
``hf_hub_filename``); this module keeps the facts about them that a pretrained cfg has no field for, so that
``facezoo models --pretrained``, the README table and model cards of fine-tuned models can show them. Each model
file registers its tags with :func:`register_pretrained` next to its ``default_cfgs``.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

__all__ = [
    "PretrainedInfo",
    "register_pretrained",
    "pretrained_info",
    "list_pretrained_info",
    "REPORTED_COLUMNS",
    "pretrained_table_markdown",
    "pretrained_json",
    "read_color_space",
    "check_pretrained_tag",
    "is_pretrained_tag",
    "print_pretrained",
    "CVLFACE_MODEL_YAML",
    "source_is_bgr",
    "resolve_tag",
    "check_tag_reachable",
    "tag_download_error",
]


@dataclass(frozen=True)
class PretrainedInfo:
    """Facts about one pretrained tag, as its source states them (never facezoo's own measurement)."""

    #: ``architecture.tag``, e.g. ``iresnet100.adaface_webface12m``
    name: str
    #: Hugging Face Hub repository the weights come from, e.g. ``minchul/cvlface_adaface_ir101_webface12m``
    hub_id: str
    #: file in that repository holding the weights
    filename: str
    #: training data as the source names it, e.g. ``WebFace12M``
    dataset: str
    #: training loss, e.g. ``AdaFace``
    loss: str
    #: the weights' license as the source states it (SPDX id where there is one, else ``other``)
    license: str
    #: one line on the license terms, e.g. "weights follow WebFace's terms: non-commercial research only"
    license_note: str
    #: who published the weights, e.g. ``CVLface (mk-minchul/CVLface)``
    source: str
    #: web page of the source (the Hub repository or the code)
    url: str
    #: accuracies the source reports, in %, keyed by benchmark name (``LFW``, ``IJB-C@FAR=1e-4`` ...)
    reported: Dict[str, float] = field(default_factory=dict)
    #: where the reported numbers come from (a URL or a file of the source)
    reported_by: str = ""
    #: anything a user must know that could not be confirmed from the source
    notes: List[str] = field(default_factory=list)
    #: model kwargs the tag's weights need (e.g. ``{'layout': 'adaface'}``): the tag alone builds the right network
    model_args: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


_REGISTRY: Dict[str, PretrainedInfo] = {}


def register_pretrained(*infos: PretrainedInfo) -> None:
    """Record ``infos`` (called by the model files at import, beside their ``default_cfgs``)."""
    for info in infos:
        if "." not in info.name:
            raise ValueError(f"pretrained tag {info.name!r} is not 'architecture.tag'")
        _REGISTRY[info.name] = info


def pretrained_info(name: str) -> Optional[PretrainedInfo]:
    """The facts of tag ``name`` (``architecture.tag``), or None when facezoo has none for it."""
    return _REGISTRY.get(name)


def list_pretrained_info(patterns: Sequence[str] = ()) -> List[PretrainedInfo]:
    """The registered tags' facts in registration order (each model file lists its best tag first), optionally only
    the tags matching any of the shell ``patterns`` (e.g. ``'iresnet100*'``, ``'*webface4m'``)."""
    names = [k for k in _REGISTRY if not patterns or any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    return [_REGISTRY[k] for k in names]


def is_pretrained_tag(name: object) -> bool:
    """True when ``name`` is ``architecture.tag`` with weights timm knows (e.g. ``iresnet100.adaface_webface12m``):
    naming one where facezoo asks for a model means its weights."""
    from timm.models import is_model_pretrained

    import facezoo  # noqa: F401  (the model files register their tags)

    return (
        isinstance(name, str)
        and "." in name
        and not name.startswith(("hf-hub:", "local-dir:"))
        and "/" not in name
        and is_model_pretrained(name)
    )


def check_pretrained_tag(name: str) -> None:
    """Raise :class:`UnknownNameError` listing the architecture's tags when ``name`` (``arch.tag``) is not one."""
    from timm.models import get_pretrained_cfg, list_pretrained

    from facezoo.errors import UnknownNameError, did_you_mean

    arch = name.split(".", 1)[0]
    try:
        if get_pretrained_cfg(name, allow_unregistered=False) is not None:
            return
    except RuntimeError:
        pass
    tags = list_pretrained(f"{arch}.*")
    raise UnknownNameError(
        f"unknown pretrained tag {name!r}{did_you_mean(name, tags)} "
        + (f"({arch} has: {', '.join(tags)})" if tags else f"({arch} has no pretrained weights)")
    )


# --- the table ``facezoo models --pretrained`` prints (and the README shows) ----------------------------------------

#: the benchmarks shown in the table, as (key in ``PretrainedInfo.reported``, column header)
REPORTED_COLUMNS = (
    ("LFW", "LFW"),
    ("CFP-FP", "CFP-FP"),
    ("AgeDB-30", "AgeDB-30"),
    ("IJB-B@0.01", "IJB-B TAR@FAR 0.01"),
    ("IJB-C@0.01", "IJB-C TAR@FAR 0.01"),
)


def pretrained_table_markdown(infos: Sequence[PretrainedInfo]) -> str:
    """A Markdown table of ``infos``: tag, source repository, data, loss, license and the reported accuracies."""
    header = ["tag", "weights from", "data", "loss", "license"] + [h for _, h in REPORTED_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for info in infos:
        row = [
            f"`{info.name}`",
            f"[{info.hub_id}]({info.url})",
            info.dataset,
            info.loss,
            f"{info.license} ({info.license_note})" if info.license_note else info.license,
        ]
        row += [f"{info.reported[k]:.2f}" if k in info.reported else "-" for k, _ in REPORTED_COLUMNS]
        lines.append("| " + " | ".join(row) + " |")
    sources = sorted({info.reported_by for info in infos if info.reported_by})
    notes = sorted({n for info in infos for n in info.notes})
    lines.append("")
    lines.append(
        "Accuracies (%) as reported by each tag's source"
        + (f" ({'; '.join(sources)})" if sources else "")
        + ", not measured by facezoo. The first tag of each architecture is its default (`pretrained=True`)."
    )
    for note in notes:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def print_pretrained(patterns: Sequence[str], fmt: str = "markdown") -> int:
    """``facezoo models --pretrained [PATTERN...] [--format markdown|json]``: print the matching tags' facts."""
    import facezoo  # noqa: F401  (the model files register their tags)
    from facezoo.errors import UnknownNameError

    infos = list_pretrained_info(patterns)
    if not infos:
        raise UnknownNameError(
            f"no pretrained tag matches {' '.join(patterns)!r}; 'facezoo models --pretrained' lists them all "
            "(patterns are shell patterns, e.g. 'iresnet100*')"
        )
    print(pretrained_json(infos) if fmt == "json" else pretrained_table_markdown(infos), end="")
    return 0


def pretrained_json(infos: Sequence[PretrainedInfo]) -> str:
    """``infos`` as a JSON list (every field, every reported number)."""
    return json.dumps([info.as_dict() for info in infos], indent=2)


# --- facts a model file reads from the source repository when it loads a tag ---------------------------------------


def read_color_space(hub_id: str, filename: str, cache_dir: Optional[str] = None) -> str:
    """The input channel order (``'RGB'`` or ``'BGR'``) that repository ``hub_id`` states in its YAML ``filename``
    (field ``color_space``, as CVLface's ``pretrained_model/model.yaml``), downloaded through the Hugging Face
    cache like the weights. A missing file or field, or another value, is a :class:`facezoo.errors.CheckpointError`
    naming the repository: the channel order is never guessed."""
    import yaml
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from timm.models._hub import hf_split

    from facezoo.errors import CheckpointError, HubError

    repo, revision = hf_split(hub_id)
    try:
        path = hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir)
    except EntryNotFoundError:
        raise CheckpointError(
            f"{repo}: no {filename} in this repository, so the input channel order (RGB or BGR) of its weights is "
            "unknown; facezoo does not guess it"
        ) from None
    except LocalEntryNotFoundError:
        raise HubError(
            f"{repo}: {filename} is not in the local Hugging Face cache and the Hub cannot be asked (offline); "
            "unset HF_HUB_OFFLINE or connect to download it"
        ) from None
    try:
        with open(path, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{repo}: {filename} is not readable YAML ({' '.join(str(exc).split())[:120]})") from None
    value = conf.get("color_space") if isinstance(conf, dict) else None
    if value not in ("RGB", "BGR"):
        raise CheckpointError(f"{repo}: {filename} gives color_space {value!r}; expected 'RGB' or 'BGR'")
    return value


#: where a CVLface repository states the channel order its weights expect (``color_space: 'RGB'|'BGR'``)
CVLFACE_MODEL_YAML = "pretrained_model/model.yaml"


def source_is_bgr(wrapper: str, model: Any, cache_dir: Optional[str] = None) -> Optional[bool]:
    """Whether a checkpoint saved by the wrapper of prefix ``wrapper`` expects BGR input, as its source states it;
    None when the checkpoint is no wrapper's (the caller keeps its layout's rule).

    A CVLface ``model.safetensors`` (keys ``model.net.*``) states it in its repository's ``pretrained_model/
    model.yaml``: read from the Hub cache of the model's ``hf_hub_id`` (a tag), or beside a local weights file (a
    downloaded repository). Neither there is a :class:`CheckpointError`: the channel order is never guessed.
    Shared by every model file with CVLface tags.
    """
    from pathlib import Path

    from facezoo.errors import CheckpointError
    from facezoo.models.checkpoints import CVLFACE_PREFIX

    if wrapper != CVLFACE_PREFIX:
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    file = cfg.get("file")
    if file:
        yaml_path = Path(file).parent / CVLFACE_MODEL_YAML
        if not yaml_path.is_file():
            raise CheckpointError(
                f"{file}: a CVLface model.safetensors (keys model.net.*), but no {CVLFACE_MODEL_YAML} beside it "
                "states its input channel order (RGB or BGR); keep the repository's files together, or load it "
                "by its facezoo tag (facezoo models --pretrained)"
            )
        return _local_color_space(yaml_path) == "BGR"
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise CheckpointError(
            "a CVLface checkpoint (keys model.net.*) from no Hub repository or file: its input channel order "
            f"(stated in the repository's {CVLFACE_MODEL_YAML}) is unknown"
        )
    return read_color_space(hub_id, CVLFACE_MODEL_YAML, cache_dir=cache_dir) == "BGR"


def _local_color_space(path: Any) -> str:
    import yaml

    from facezoo.errors import CheckpointError

    try:
        conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: not readable YAML ({' '.join(str(exc).split())[:120]})") from None
    value = conf.get("color_space") if isinstance(conf, dict) else None
    if value not in ("RGB", "BGR"):
        raise CheckpointError(f"{path}: color_space {value!r}; expected 'RGB' or 'BGR'")
    return value


# --- what a model file's ``_create_*`` does with a tag --------------------------------------------------------------


def resolve_tag(
    variant: str, pretrained: bool, kwargs: Dict[str, Any], plain_cfgs: Dict[str, Dict[str, Any]]
) -> Optional[PretrainedInfo]:
    """The facts of the pretrained tag whose weights this model is built for, or None; sets up ``kwargs`` for it.

    A tag named explicitly (``iresnet100.adaface_webface12m``: timm passes ``pretrained_cfg='adaface_webface12m'``),
    or the architecture's default tag when its weights are loaded (``pretrained=True``, no file of the user's), adds
    the tag's model args (e.g. ``layout``) unless given. An unknown tag is an error listing the architecture's tags.
    A model built without a tag's weights (from scratch, or from the user's file) gets the plain cfg of its
    architecture (``plain_cfgs[variant]``), so that its ``pretrained_cfg`` (license, Hub id) does not claim weights
    it does not have.
    """
    from timm.models import get_pretrained_cfg

    cfg_arg = kwargs.get("pretrained_cfg")
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if isinstance(cfg_arg, str) and cfg_arg:
        name = f"{variant}.{cfg_arg}"
        check_pretrained_tag(name)
        info = pretrained_info(name)
    elif cfg_arg is None:
        default = get_pretrained_cfg(variant)
        info = pretrained_info(f"{variant}.{default.tag}") if default is not None and default.tag else None
        if info is not None and not (pretrained and not overlay.get("file") and not overlay.get("state_dict")):
            kwargs["pretrained_cfg"] = dict(plain_cfgs[variant], architecture=variant)
            return None
    else:
        return None
    for key, value in (info.model_args if info is not None else {}).items():
        kwargs.setdefault(key, value)
    return info


def check_tag_reachable(info: PretrainedInfo, cache_dir: Optional[str]) -> None:
    """Fail within seconds (:class:`HubError`) when a tag's weights are neither cached nor downloadable."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models._hub import hf_split

    from facezoo.models.factory import check_hub_reachable

    repo, revision = hf_split(info.hub_id)
    cached = try_to_load_from_cache(repo, info.filename, cache_dir=cache_dir, revision=revision)
    if not isinstance(cached, str):
        check_hub_reachable(info.hub_id)


def tag_download_error(info: PretrainedInfo, exc: BaseException) -> Optional[Exception]:
    """The facezoo error for a failed download of a tag's weights (one line naming the repository and the file)."""
    from facezoo.errors import HubError

    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
        return HubError(
            f"{info.hub_id}: {info.filename} (weights of {info.name}) is not in the local Hugging Face cache and the "
            "Hub cannot be asked (HF_HUB_OFFLINE=1 or no network); unset HF_HUB_OFFLINE or connect to download it"
        )
    if "EntryNotFoundError" in names:
        return HubError(f"{info.hub_id}: no file {info.filename} in this repository (weights of {info.name})")
    return None
