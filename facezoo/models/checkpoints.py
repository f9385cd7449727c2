"""Reading face-backbone checkpoints: file checks, unwrapping, AdaFace key mapping, and errors that explain.

* :func:`check_checkpoint_file` -- the file exists and is a torch checkpoint or a safetensors file (else it says what
  it is not), before timm's loader sees it; :func:`checkpoint_load_error` explains a failed ``torch.load``;
* :func:`unwrap_state_dict` -- the state_dict inside a training checkpoint (``{'state_dict': ...}``, ``model``,
  ``backbone``), DDP / ``torch.compile`` prefixes cleaned by timm's ``clean_state_dict``;
* :func:`map_adaface_keys` -- AdaFace / TFace / CVLface "IR" checkpoints (``input_layer`` / ``body`` /
  ``output_layer`` keys, Lightning ``model.`` prefix) renamed to facezoo's keys, BGR first conv turned RGB;
* :func:`describe_state_dict` -- which facezoo model a state_dict looks like, for error messages: one detector per
  family (:func:`describe_iresnet` here, the others registered by their model files with
  :func:`register_checkpoint_detector`);
* :func:`load_weights_only` / :func:`convert_checkpoint` -- ``torch.load(weights_only=True)`` with refused objects
  left out (never unpickled), and the tensors of a training checkpoint written to a safetensors file.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import clean_state_dict

from facezoo.errors import CheckpointError, require_path

__all__ = [
    "check_state_dict_fits",
    "check_checkpoint_file",
    "checkpoint_load_error",
    "unwrap_state_dict",
    "CVLFACE_PREFIX",
    "strip_wrapper_prefix",
    "adaface_prefix",
    "map_adaface_keys",
    "describe_state_dict",
    "describe_iresnet",
    "register_checkpoint_detector",
    "refused_checkpoint_message",
    "load_weights_only",
    "convert_checkpoint",
    "short_list",
    "fill_learnable_pool",
    "LEARNABLE_POOL_KEYS",
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
#: containers training code wraps a backbone's state_dict in (Lightning, timm train.py, insightface / custom scripts)
_CONTAINERS = ("state_dict", "model", "backbone")
_PREFIXES = ("backbone.",)
#: CVLface's transformers wrapper (``wrapper.py``: ``self.model = get_model(conf)``, each model keeping its network as
#: ``.net``) saves ``model.safetensors`` with every key under this prefix
CVLFACE_PREFIX = "model.net."


def _depths() -> Mapping[int, Tuple[int, ...]]:
    from facezoo.models.iresnet import DEPTHS  # the model file owns the depths; imported late (it imports us)

    return DEPTHS


# --- the file -------------------------------------------------------------------------------------------------------


def check_checkpoint_file(path: PathLike) -> Path:
    """``Path(path)`` if it is a file that timm can read as weights: a ``.safetensors`` file, or what ``torch.save``
    writes (a zip archive holding ``data.pkl``, or the legacy format: a pickle that starts with torch's magic
    number). Otherwise :class:`CheckpointError` saying what the file is not (and, where it can tell, what it is)."""
    p = require_path(path, "checkpoint file", kind="file")
    with open(p, "rb") as f:
        head = f.read(64)
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt"):
                pass
        except Exception as exc:
            raise CheckpointError(f"{p}: not a safetensors file ({' '.join(str(exc).split())})") from None
        return p
    if not head:
        raise CheckpointError(f"{p}: the file is empty, not a torch checkpoint or a safetensors file")
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                raise CheckpointError(f"{p}: a zip archive, but not a torch checkpoint (no data.pkl inside)")
        return p
    if head.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{p}: not a readable torch checkpoint: a damaged or truncated zip archive (torch.save "
            "writes a zip archive; copy or download the file again)"
        )
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        if _legacy_torch_magic(head):  # torch.save's legacy (pre-1.6) format
            return p
        raise CheckpointError(
            f"{p}: a Python pickle, but not a torch checkpoint (torch.save writes a zip archive; its "
            "legacy format starts with torch's magic number); facezoo does not unpickle other files"
        )
    if head.lstrip().startswith((b"{", b"[")):
        what = "a JSON or text file"
    elif head.startswith(b"\x89HDF"):
        what = "an HDF5 file (Keras / TensorFlow weights)"
    elif b"\x00" not in head[:64] and all(32 <= c < 127 or c in (9, 10, 13) for c in head[:64]):
        what = "a text file"
    else:
        what = f"a file that starts with {head[:8]!r}"
    raise CheckpointError(
        f"{p}: not a torch checkpoint (torch.save writes a zip archive) nor a safetensors file; it is {what}"
    )


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain values only: any global (class, function) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def _legacy_torch_magic(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) starts with the pickled magic number of torch's legacy format."""
    import io

    try:
        return _NoGlobals(io.BytesIO(head)).load() == torch.serialization.MAGIC_NUMBER
    except Exception:  # truncated, another first object, a refused global: not torch's legacy format
        return False


def checkpoint_load_error(path: Optional[PathLike], exc: BaseException) -> Optional[CheckpointError]:
    """The :class:`CheckpointError` that explains why ``torch.load(path, weights_only=True)`` (directly or inside
    timm's loader) failed with ``exc``, or None when ``exc`` is not a checkpoint-reading failure.

    A checkpoint whose pickle names Python objects (a Lightning ``.ckpt``'s hyper-parameters) gets the way to extract
    its weights; one torch cannot parse at all is called unreadable, with torch's reason."""
    cause = exc if isinstance(exc, pickle.UnpicklingError) else exc.__cause__
    src = str(path) if path is not None else "the checkpoint"
    if isinstance(cause, pickle.UnpicklingError):
        refused = _unsafe_globals(path)
        if refused:
            return CheckpointError(refused_checkpoint_message(str(path) if path else None, refused))
        return CheckpointError(
            f"{src}: not a readable torch checkpoint (torch.load(weights_only=True): {_first_words(cause)})"
        )
    text = str(exc)
    if isinstance(exc, (EOFError, UnicodeDecodeError)) or any(t in text for t in _UNREADABLE):
        return CheckpointError(f"{src}: not a readable torch checkpoint ({_first_words(exc)})")
    return None


#: what torch.load says about files it cannot parse
_UNREADABLE = (
    "PytorchStreamReader",
    "Invalid magic number",
    "Expected input to be a checkpoint",
    "central directory",
    "invalid load key",
    "pickle data was truncated",
    "unpickling stack underflow",
)


def _first_words(exc: BaseException, n: int = 25) -> str:
    words = str(exc).split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "") if words else type(exc).__name__


def _unsafe_globals(path: Optional[PathLike]) -> List[str]:
    """The globals a checkpoint's pickle names that ``weights_only=True`` does not allow ([] if none, or unknown)."""
    if not path or not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        return []
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # e.g. not a zip checkpoint
        return []


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The backbone state_dict inside a checkpoint: containers unwrapped, ``module.`` / ``_orig_mod.`` (timm's
    ``clean_state_dict``) and ``backbone.`` prefixes removed."""
    state_dict: Any = checkpoint
    for container in _CONTAINERS:
        if isinstance(state_dict, Mapping) and isinstance(state_dict.get(container), Mapping):
            state_dict = state_dict[container]
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"no state_dict in this checkpoint (found {type(state_dict).__name__})")
    out = {}
    for k, v in clean_state_dict(dict(state_dict)).items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def strip_wrapper_prefix(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], str]:
    """``(state_dict without the prefix, prefix)`` when every key carries a known wrapper's prefix (CVLface's
    :data:`CVLFACE_PREFIX`), else ``(dict(state_dict), '')``. The prefix tells the caller whose file it is (e.g. to
    read that source's input channel order)."""
    for prefix in (CVLFACE_PREFIX,):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}, prefix
    return dict(state_dict), ""


# --- AdaFace / TFace / CVLface ---------------------------------------------------------------------------------------

# AdaFace / TFace / CVLface "IR" checkpoints (AdaFace ``net.py`` ``Backbone(mode='ir')``, TFace ``model_irse.py``)
_ADAFACE_STEM_KEY = "input_layer.0.weight"
_ADAFACE_MODULES = ("input_layer.", "body.", "output_layer.")
#: their stem and output modules -> facezoo's (output_layer = BN2d, Dropout, Flatten, Linear, BN1d(affine=False))
_ADAFACE_TOP = {
    "input_layer.0": "conv1",
    "input_layer.1": "bn1",
    "input_layer.2": "prelu",
    "output_layer.0": "bn2",
    "output_layer.3": "fc",
    "output_layer.4": "features",
}
#: ``BasicBlockIR.res_layer`` (BN, conv3x3, BN, PReLU, conv3x3 stride, BN) -> IBasicBlock; shortcut_layer -> downsample
_ADAFACE_RES = ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")
_ADAFACE_UNIT = re.compile(r"body\.(\d+)\.(res_layer|shortcut_layer)\.([^.]+)\.(.+)$")
_ADAFACE_CALL = "timm.create_model({name!r}, layout='adaface', pretrained=True, pretrained_cfg_overlay=dict(file=...))"


def adaface_prefix(state_dict: Dict[str, Any]) -> Optional[str]:
    """The prefix of an AdaFace-style backbone's keys ('', or 'model.' in Lightning ``.ckpt`` files), else None."""
    prefixes = [k[: -len(_ADAFACE_STEM_KEY)] for k in state_dict if k.endswith(_ADAFACE_STEM_KEY)]
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    return min(prefixes, key=len) if prefixes else None


def _adaface_stages(keys: Sequence[str]) -> Tuple[int, ...]:
    """Units per stage of an AdaFace-style ``body``: a stage starts at unit 0 and at each conv shortcut."""
    keys = set(keys)
    units = {int(m.group(1)) for k in keys if (m := _ADAFACE_UNIT.match(k))}
    if not units:
        return ()
    n = max(units) + 1
    starts = sorted({0} | {i for i in range(n) if f"body.{i}.shortcut_layer.0.weight" in keys})
    return tuple(b - a for a, b in zip(starts, starts[1:] + [n]))


def _adaface_unsupported(keys: Sequence[str]) -> Optional[str]:
    """Why an AdaFace-style backbone is no IResNet (IR-SE, or the bottleneck IR-152 / IR-200), else None."""
    odd = sorted(
        {m.group(3) for k in keys if (m := _ADAFACE_UNIT.match(k)) and m.group(2) == "res_layer"}
        - {str(i) for i in range(len(_ADAFACE_RES))}
    )
    if not odd:
        return None
    return (
        f"its units have res_layer modules {odd} besides BasicBlockIR's 0-5: an IR-SE ('se_block') or bottleneck "
        "(AdaFace/TFace IR-152 / IR-200, widths 256-2048) backbone, which facezoo's IResNet does not implement"
    )


def _adaface_model_name(keys: Sequence[str]) -> Optional[str]:
    """The facezoo model with an AdaFace-style backbone's blocks per stage, e.g. 'iresnet50', else None."""
    stages = _adaface_stages(keys)
    return next((f"iresnet{d}" for d, b in _depths().items() if b == stages), None)


def _describe_adaface(keys: Sequence[str]) -> str:
    what = "an AdaFace/TFace/CVLface 'IR' checkpoint (input_layer/body/output_layer keys)"
    reason = _adaface_unsupported(keys)
    if reason:
        return f"{what}; {reason}"
    name = _adaface_model_name(keys)
    if name is None:
        return f"{what} with blocks {_adaface_stages(keys)}, which no facezoo depth has"
    return f"{what} with the blocks of {name}: load it with {_ADAFACE_CALL.format(name=name)}"


def map_adaface_keys(
    state_dict: Dict[str, Any], prefix: str, model: nn.Module, bgr: bool = True
) -> Dict[str, torch.Tensor]:
    """Rename an AdaFace-style backbone to facezoo keys, drop what is not backbone (e.g. ``head.kernel``), and, for
    weights trained on BGR input (``bgr``: AdaFace's own checkpoints are), turn the first conv into an RGB one
    (reverse its input channels) so the model takes RGB like every facezoo model."""
    names = {key: key[len(prefix) :] for key in state_dict if key.startswith(prefix)}
    backbone = [k for k in names.values() if k.startswith(_ADAFACE_MODULES)]
    reason = _adaface_unsupported(backbone)
    if reason:
        raise CheckpointError(f"cannot load this AdaFace/TFace/CVLface 'IR' checkpoint: {reason}.")
    if getattr(model, "layout", "insightface") != "adaface":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = _adaface_model_name(backbone) or cfg.get("architecture", "iresnet50")
        raise CheckpointError(
            "The model was built without layout='adaface', but this is an AdaFace/TFace/CVLface 'IR' checkpoint "
            f"(input_layer/body/output_layer keys), whose network differs from insightface's IResNet (parameter-free "
            f"first shortcut, BatchNorm1d without affine). Pass layout='adaface': {_ADAFACE_CALL.format(name=name)}"
        )
    position = [(s, b) for s, n in enumerate(_adaface_stages(backbone), start=1) for b in range(n)]
    out: Dict[str, torch.Tensor] = {}
    dropped = []
    for key, v in state_dict.items():
        k = names.get(key, "")
        if not k.startswith(_ADAFACE_MODULES):
            dropped.append(key)
        elif m := _ADAFACE_UNIT.match(k):
            stage, block = position[int(m.group(1))]
            part, idx, param = m.group(2), m.group(3), m.group(4)
            name = _ADAFACE_RES[int(idx)] if part == "res_layer" else f"downsample.{idx}"
            out[f"layer{stage}.{block}.{name}.{param}"] = v
        else:
            module, _, param = k.rpartition(".")
            out[f"{_ADAFACE_TOP[module]}.{param}" if module in _ADAFACE_TOP else k] = v  # unknown keys fail strictly
    if dropped:
        _logger.info(
            "AdaFace-style checkpoint: dropped %d keys outside the backbone: %s", len(dropped), short_list(dropped)
        )
    if bgr and "conv1.weight" in out:
        out["conv1.weight"] = out["conv1.weight"].flip(1)  # BGR -> RGB
    return out


# --- diagnostics ----------------------------------------------------------------------------------------------------


#: per-family detectors: each returns the model name a state_dict looks like, or None when it is not of its family;
#: the model files register theirs at import (:func:`register_checkpoint_detector`)
_DETECTORS: List[Callable[[Dict[str, torch.Tensor]], Optional[str]]] = []


def register_checkpoint_detector(detector: Callable[[Dict[str, torch.Tensor]], Optional[str]]) -> None:
    """Add a family's detector to :func:`describe_state_dict` (a model file calls this once, at import)."""
    if detector not in _DETECTORS:
        _DETECTORS.append(detector)


def describe_state_dict(state_dict: Dict[str, torch.Tensor]) -> str:
    """Guess which facezoo model a state_dict belongs to (for error messages), e.g. 'iresnet50_gwp_k7'.

    Asks each family's detector in turn (IResNet, then those the other model files registered); a state_dict none
    of them knows is named by its first keys.
    """
    for detector in [describe_iresnet, *_DETECTORS]:
        name = detector(state_dict)
        if name is not None:
            return name
    return f"no facezoo model (keys {short_list(list(state_dict), 4)})"


def describe_iresnet(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """The IResNet (insightface or AdaFace layout) a state_dict looks like, or None when it is no IResNet."""
    prefix = adaface_prefix(state_dict)
    if prefix is not None:
        return _describe_adaface([k[len(prefix) :] for k in state_dict if k.startswith(prefix)])
    keys = list(state_dict)
    if "conv1.weight" not in state_dict or "fc.weight" not in state_dict:
        return None
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(max(idx) + 1 if idx else 0)
    depth = next((d for d, b in _depths().items() if tuple(blocks) == b), None)
    depth_name = f"iresnet{depth}" if depth else f"an IResNet with blocks {tuple(blocks)}"
    k = state_dict["conv1.weight"].shape[-1]
    fc_in = state_dict["fc.weight"].shape[1]
    stem = "_k7" if k == 7 else ""
    adaface = "layer1.0.downsample.0.weight" not in state_dict and "features.weight" not in state_dict
    layout = " with layout='adaface'" if adaface else ""
    if "pool.conv.weight" in state_dict:
        return f"{depth_name}_gdc{stem}{layout}"
    for key, kind in (("pool.logits", "gwp_softmax"), ("pool.log_sigma_scale", "gwp_sigma")):
        if key in state_dict:
            return f"{depth_name}_gwp{stem}{layout} with global_pool={kind!r}"
    if fc_in == 512:
        return f"{depth_name}_gwp{stem}{layout} (or {depth_name}_gap{stem}{layout}: same keys)"
    return f"{depth_name}{stem}{layout}"


#: parameter names of the learnable GWP kernels (facezoo.layers.LearnableSigmaGWP / SoftmaxKernelGWP)
LEARNABLE_POOL_KEYS = ("log_sigma_scale", "logits")


def fill_learnable_pool(
    state_dict: Dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], pool_prefix: str
) -> Dict[str, torch.Tensor]:
    """Start a learnable GWP kernel at the model's initial value when the checkpoint has none.

    A GWP (or GAP) checkpoint loaded into a model built with ``global_pool='gwp_sigma'`` / ``'gwp_softmax'`` lacks the
    kernel's parameter: it gets the model's freshly initialized one (the paper's Gaussian), so fine-tuning a GWP
    checkpoint with a learnable kernel starts exactly where the checkpoint was. ``expected`` is the model's
    state_dict (read before loading), ``pool_prefix`` e.g. ``'pool.'``. A checkpoint that stores any key of that
    pool is left alone (a mismatch is then reported by the caller).
    """
    if any(k.startswith(pool_prefix) for k in state_dict):
        return state_dict
    for name in LEARNABLE_POOL_KEYS:
        key = pool_prefix + name
        if key in expected:
            state_dict[key] = expected[key].detach().clone()
    return state_dict


def short_list(items: List[str], limit: int = 8) -> str:
    if not items:
        return "[]"
    shown = ", ".join(items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"


def check_state_dict_fits(
    state_dict: Dict[str, torch.Tensor], model: nn.Module, hint: Optional[str] = None
) -> Dict[str, torch.Tensor]:
    """Return ``state_dict`` when its keys and shapes are exactly ``model``'s (a checkpoint without a classifier
    fits a model with a new one: timm loads the head non-strictly), else raise a :class:`CheckpointError` naming
    the missing, unexpected or mis-shaped keys and ``hint`` (default: the model the checkpoint looks like)."""
    expected = model.state_dict()
    if getattr(model, "num_classes", 0) > 0 and "classifier.weight" not in state_dict:
        expected = {k: v for k, v in expected.items() if not k.startswith("classifier.")}
    hint = hint if hint is not None else f"The checkpoint looks like {describe_state_dict(state_dict)}."
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit this model: missing keys {short_list(missing)}, unexpected keys "
            f"{short_list(unexpected)}. {hint}"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise CheckpointError(f"checkpoint shapes do not fit this model: {short_list(mismatched)}. {hint}")
    return state_dict


def refused_checkpoint_message(path: Optional[str], refused: Optional[Sequence[str]] = None) -> str:
    """timm loads checkpoints with ``torch.load(weights_only=True)``: say what it refused and how to get the weights."""
    refused = _unsafe_globals(path) if refused is None else list(refused)
    names = f" ({', '.join(refused)})" if refused else ""
    src = path or "IN.ckpt"
    return (
        f"torch.load(weights_only=True) refused {src}: besides its weights it pickles Python objects{names}, "
        "e.g. a Lightning checkpoint's hyper-parameters or callback state, and facezoo never unpickles those. "
        f"Extract the weights once with `facezoo models convert-checkpoint {src} weights.safetensors` (it also "
        "loads with weights_only=True, leaving those objects out) and pass "
        "pretrained_cfg_overlay=dict(file='weights.safetensors')."
    )


# --- weights_only loading and conversion ----------------------------------------------------------------------------


class _Dropped(list):
    """Stands in for a pickled object that ``weights_only=True`` refuses (hyper-parameters, callback state).

    It takes any arguments and state and keeps none, so no code the checkpoint names is run: the restricted
    unpickler still calls only torch's allowlist and this class. (A ``list`` so that pickled list items can land.)
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> _Dropped:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass


def load_weights_only(path: PathLike) -> Tuple[Any, List[str]]:
    """``torch.load(path, weights_only=True)``; objects of globals it refuses load as inert placeholders.

    Returns the checkpoint and the refused globals (empty when the plain load worked). Raises
    :class:`CheckpointError` for a file that is not a checkpoint, or when even the placeholders are not enough
    (e.g. a dict subclass holding items).
    """
    path = check_checkpoint_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except Exception as exc:
        refused = _unsafe_globals(path) if isinstance(exc, pickle.UnpicklingError) else []
        if not refused:
            error = checkpoint_load_error(path, exc)
            if error is None:
                raise
            raise error from None
    try:
        with torch.serialization.safe_globals([(_Dropped, name) for name in refused]):
            return torch.load(path, map_location="cpu", weights_only=True), refused
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) cannot read this checkpoint even with its Python objects "
            f"({', '.join(refused)}) left out, and facezoo unpickles nothing else ({_first_words(exc, 20)}). Save "
            "the weights alone from the code that wrote it, e.g. torch.save(module.state_dict(), 'weights.pth'), and "
            "load or convert that file."
        ) from None


def convert_checkpoint(src: PathLike, dst: PathLike) -> Dict[str, Any]:
    """Write the tensors of a checkpoint's state_dict (keys kept as they are) to the safetensors file ``dst``,
    atomically (``dst`` is the whole file or untouched). Returns what was written and left out."""
    from safetensors.torch import save_file

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output must end in .safetensors")
    ckpt, refused = load_weights_only(src)
    state_dict: Any = ckpt
    for container in ("state_dict", "model"):
        if isinstance(state_dict, Mapping) and isinstance(state_dict.get(container), Mapping):
            state_dict = state_dict[container]
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{src}: no state_dict in this checkpoint (found {type(state_dict).__name__})")
    tensors = {k: v.detach().clone().contiguous() for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{src}: the state_dict holds no tensors")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    save_file(tensors, str(partial))
    os.replace(partial, dst)
    return {
        "tensors": len(tensors),
        "bytes": dst.stat().st_size,
        "left_out": len(state_dict) - len(tensors),
        "refused": list(refused),
    }
