"""ONNX export of face backbones: input ``input`` (RGB, normalized), output ``embedding``, dynamic batch axis.

torch 2.14's ``torch.onnx.export`` is used with its default exporter, ``dynamo=True`` (``torch.export`` +
onnxscript). Checked on torch 2.14.1 for iresnet18_gwp: it gives a clean graph of 51 nodes (Conv, BatchNormalization,
PRelu, Add, MatMul, Gemm, Reshape) in which the GWP kernel is one constant initializer (the 7x7 Gaussian divided by
49, shape [49, 1]) and the batch axis is symbolic. The TorchScript exporter (``dynamo=False``, deprecated) traces
the head's shape arithmetic instead (127 nodes with Shape / Gather / Slice / Cast around the kernel). The model is
written as one self-contained file (``external_data=False``: every facezoo model is far below ONNX's 2 GB limit).

After writing, the file is checked with ``onnx.checker`` and, where onnxruntime is installed, run on a random batch
and compared with torch (the max abs difference is returned and printed by ``facezoo export onnx``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn

from facezoo.errors import ConfigError, FacezooError

__all__ = ["export_onnx", "require_onnx", "check_input_size", "MissingDependencyError", "INPUT_NAME", "OUTPUT_NAME"]

_logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
#: batch of the random input compared under onnxruntime (not the traced batch, so the dynamic axis is exercised)
CHECK_BATCH = 3


class MissingDependencyError(FacezooError, ImportError):
    """An optional dependency of the requested feature is not installed."""


def require_onnx() -> None:
    """Raise :class:`MissingDependencyError` naming the ``onnx`` extra when onnx or onnxscript is missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"ONNX export needs onnx and onnxscript ({exc}); install them with pip install 'facezoo[onnx]'"
        ) from None


def check_input_size(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> tuple:
    """(height, width) to export ``model`` at: ``input_size`` or the model's; fixed-size heads refuse others."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    default, fixed = tuple(cfg.get("input_size", (3, 112, 112)))[1:], bool(cfg.get("fixed_input_size", False))
    try:  # the model's current input (e.g. built with img_size=...), where timm records it
        from timm.models import get_model_input_config

        current = get_model_input_config(model)
        default, fixed = tuple(current["input_size"])[1:], bool(current["fixed_input_size"])
    except (ImportError, AttributeError, KeyError, TypeError):
        pass
    if input_size is None:
        return default
    hw = tuple(int(s) for s in input_size)
    if len(hw) != 2 or min(hw) < 16:
        raise ConfigError(f"input_size must be (height, width) of at least 16 pixels each, got {input_size!r}")
    if hw != default and fixed:
        name = cfg.get("architecture", type(model).__name__)
        raise ConfigError(
            f"input_size {hw[0]}x{hw[1]}: {name} needs {default[0]}x{default[1]} input (its "
            f"{getattr(model, 'pool_type', '')} head is built for that map size); use a _gap or _gwp "
            "model for other sizes"
        )
    return hw


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    opset: Optional[int] = None,
    input_size: Optional[Sequence[int]] = None,
    check: bool = True,
) -> Dict[str, Any]:
    """Write ``model`` (an embedding model, e.g. a facezoo IResNet) to the ONNX file ``path``.

    Args:
        model: exported in eval mode on its device (its train/eval mode is restored afterwards).
        path: output file.
        opset: ONNX opset (default: the exporter's).
        input_size: (height, width); default the model's pretrained_cfg input size (112x112). Fixed-size heads
            (flatten, GDC) refuse other sizes.
        check: run ``onnx.checker`` and, where onnxruntime is installed, compare with torch on a random batch.

    Returns ``path``, ``opset``, ``input_size``, ``batch`` (of the comparison), ``max_abs_diff``, ``max_abs_output``
    (torch's largest output, the scale of the difference) and ``onnxruntime`` (its version, or None when it is not
    installed or ``check`` is off).
    """
    require_onnx()
    height, width = check_input_size(model, input_size)
    in_chans = int(getattr(model, "in_chans", 3))
    out = Path(path).expanduser()
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; give the .onnx file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        example = torch.randn(2, in_chans, height, width, device=device)
        batch = torch.export.Dim("batch")
        with torch.no_grad(), _quiet_exporter_logs():
            program = torch.onnx.export(
                model,
                (example,),
                str(out),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
        info: Dict[str, Any] = {
            "path": str(out),
            "input_size": (height, width),
            "batch": None,
            "max_abs_diff": None,
            "max_abs_output": None,
            "onnxruntime": None,
        }
        info["opset"] = _opset(out) if program is None else _opset_of(program.model_proto)
        if check:
            info.update(_check(model, out, in_chans, height, width, device))
    finally:
        model.train(was_training)
    return info


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The exporter's graph passes log every step at INFO (e.g. each deduplicated initializer): keep warnings only."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _opset_of(proto: Any) -> Optional[int]:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _opset(path: Path) -> Optional[int]:
    import onnx

    return _opset_of(onnx.load(str(path), load_external_data=False))


def _check(
    model: nn.Module, path: Path, in_chans: int, height: int, width: int, device: torch.device
) -> Dict[str, Any]:
    """onnx's checker on the file, then torch vs onnxruntime on a random batch of ``CHECK_BATCH`` faces."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    try:
        import onnxruntime as ort
    except ImportError:
        _logger.info("%s: onnxruntime is not installed; checked the graph only", path)
        return {}
    x = torch.randn(CHECK_BATCH, in_chans, height, width)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        want = model(x.to(device)).float().cpu().numpy()
    if got.shape != want.shape:
        raise RuntimeError(f"{path}: onnxruntime output {got.shape} differs from torch's {want.shape}")
    return {
        "batch": CHECK_BATCH,
        "max_abs_diff": float(abs(got - want).max()),
        "max_abs_output": float(abs(want).max()),
        "onnxruntime": ort.__version__,
    }
