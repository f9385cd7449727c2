"""Image bytes <-> uint8 RGB tensors, with errors that say where the bytes came from.

One decoder for every reader, so the benchmark's raw decode bound and the datasets measure the same thing:
JPEG through ``simplejpeg`` (libjpeg-turbo; the same pixels as ``torchvision.io``, ~10% faster here, and it can
decode straight into a caller's buffer, which ``RecordIOFaces``'s batch reader uses), everything else, and any JPEG
simplejpeg refuses, through ``torchvision.io`` (libjpeg-turbo / libpng / libwebp).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, encode_jpeg, encode_png

from facezoo.errors import DataError

try:
    from simplejpeg import decode_jpeg as _sj_decode
    from simplejpeg import decode_jpeg_header as _sj_header
except ImportError:  # pragma: no cover - a platform without simplejpeg wheels: torchvision decodes everything
    _sj_decode = _sj_header = None

# torchvision >= 0.29 warns that torchvision.io's codecs will move to TorchCodec; they are still the fastest
# in-memory JPEG decoder here (libjpeg-turbo, ~3x PIL), so silence only that notice.
_TV_NOTICE = "The image decoding and encoding capabilities of TorchVision are deprecated"


def _find_decode_op():  # the op behind torchvision.io.decode_image, without its per-call notice and logging
    try:
        op = torch.ops.image.decode_image.default
        probe = encode_png(torch.zeros(3, 2, 2, dtype=torch.uint8))
        return op if op(probe, ImageReadMode.RGB.value, False).shape == (3, 2, 2) else None
    except Exception:  # pragma: no cover - other torchvision versions: use the public function
        return None


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=_TV_NOTICE, category=DeprecationWarning)
    _DECODE_OP = _find_decode_op()

_RGB = ImageReadMode.RGB.value

__all__ = ["DataError", "decode_rgb", "encode_image", "to_uint8_chw", "cell_bytes", "resize_faces"]


def _is_jpeg(data: Union[bytes, bytearray, memoryview]) -> bool:
    return len(data) > 2 and data[0] == 0xFF and data[1] == 0xD8


def decode_rgb(data: Union[bytes, bytearray, memoryview], where: str = "<bytes>") -> torch.Tensor:
    """Decode JPEG/PNG/GIF/WEBP bytes to a uint8 RGB tensor (3, H, W); ``where`` goes into the error.

    The tensor is the channel-first view of the decoder's interleaved (H, W, 3) memory (``.contiguous()`` gives
    channel-first memory). JPEG goes through simplejpeg; other formats, and JPEGs it refuses (CMYK with odd
    markers, a truncated file libjpeg can still show), through torchvision, which raises if it cannot decode
    either. torchvision needs a writable buffer: read-only ``bytes`` are copied once (~0.3 us for a face)."""
    if len(data) == 0:
        raise DataError(f"{where}: empty image data")
    if _sj_decode is not None and _is_jpeg(data):
        try:
            return torch.from_numpy(_sj_decode(data, "rgb")).permute(2, 0, 1)
        except ValueError:
            pass  # torchvision decides: it decodes what libjpeg only warns about, and its error is the one shown
    if type(data) is not bytearray and (type(data) is not memoryview or data.readonly):
        data = bytearray(data)
    try:
        buf = torch.frombuffer(data, dtype=torch.uint8)
        if _DECODE_OP is not None:
            return _DECODE_OP(buf, _RGB, False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TV_NOTICE, category=DeprecationWarning)
            return decode_image(buf, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        reason = _decoder_reason(exc)
        raise DataError(
            f"{where}: cannot decode image ({len(data)} bytes, starts {bytes(data[:8])!r}): {reason}"
        ) from exc


def _decoder_reason(exc: Exception) -> str:
    """The decoder's reason, short: torchvision's C++ location (``decode_image, /path/x.cpp:61,``) and its advice
    on other formats (``For avif and heic format, ...``) dropped; ``--debug`` still shows the whole message."""
    text = re.sub(r"^[\w()]+, \S+\.(?:cpp|h):\d+, ", "", " ".join(str(exc).split()))
    return re.sub(r" For \w+ (?:and \w+ )?formats?, .*$", "", text)


def to_uint8_chw(image: Union[torch.Tensor, np.ndarray, Image.Image]) -> torch.Tensor:
    """Accept a PIL image, an HWC uint8 array, or a CHW uint8 tensor and return a CHW uint8 RGB tensor."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image array, got shape {image.shape}")
        arr = np.ascontiguousarray(image, dtype=np.uint8)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 (3, H, W) tensor, got {image.dtype} {tuple(image.shape)}")
        return image
    raise TypeError(f"unsupported image type {type(image).__name__}")


def resize_faces(images: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) images resized to ``size`` as every facezoo path resizes them: bilinear with antialiasing.

    Training (the in-memory synthetic cache, the device augmentation), evaluation and ``facezoo embed`` all go
    through here, so a model sees the same pixels when it is tested as when it was trained: without antialiasing a
    112 -> 32 downscale aliases (a different image than the model learnt from). uint8 in gives uint8 out (rounded);
    float in gives float out. Images already at ``size`` are returned as they are.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    y = F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    if images.dtype == torch.uint8:
        return y.round_().clamp_(0, 255).to(torch.uint8)
    return y.to(images.dtype)


def encode_image(image: Union[torch.Tensor, np.ndarray, Image.Image], format: str = "jpeg", quality: int = 95) -> bytes:
    """Encode an RGB image as JPEG (default, quality 95 like insightface's packers) or PNG bytes."""
    chw = to_uint8_chw(image)
    fmt = format.lower()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TV_NOTICE, category=DeprecationWarning)
        if fmt in ("jpeg", "jpg"):
            return encode_jpeg(chw, quality=quality).numpy().tobytes()
        if fmt == "png":
            return encode_png(chw).numpy().tobytes()
    raise ValueError(f"unknown image format {format!r}; expected 'jpeg' or 'png'")


def cell_bytes(cell: Any, where: str) -> bytes:
    """The encoded bytes of a Hugging Face ``Image`` cell read with ``decode=False`` (``{'bytes', 'path'}``)."""
    if isinstance(cell, dict):
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if cell.get("path"):
            try:
                return Path(cell["path"]).read_bytes()
            except OSError as exc:
                raise DataError(f"{where}: cannot read image file {cell['path']}: {exc.strerror or exc}") from None
    raise DataError(f"{where}: image cell has neither bytes nor a readable path")
