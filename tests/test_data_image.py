"""decode_rgb: simplejpeg for JPEG gives torchvision's pixels; other formats and refused JPEGs go to torchvision."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from facezoo.data import DataError, decode_rgb
from facezoo.data import image as image_mod


def _face(h: int = 112, w: int = 112) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = (rng.random((h // 4 + 1, w // 4 + 1, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _torchvision(data: bytes) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


#: JPEG variants, each made with the ``jpeg_bytes`` fixture
CASES = {
    "444": lambda jpeg: jpeg(_face(), subsampling=0, quality=95),
    "420": lambda jpeg: jpeg(_face(), subsampling=2, quality=90),
    "progressive": lambda jpeg: jpeg(_face(), progressive=True, quality=85),
    "gray": lambda jpeg: jpeg(_face()[..., 1], quality=90),
    "odd_size": lambda jpeg: jpeg(_face(101, 77), quality=90),
}


@pytest.mark.skipif(image_mod._sj_decode is None, reason="simplejpeg not installed")
@pytest.mark.parametrize("case", sorted(CASES))
def test_jpeg_pixels_equal_torchvision(case, jpeg_bytes):
    data = CASES[case](jpeg_bytes)
    got, ref = decode_rgb(data), _torchvision(data)
    assert got.dtype == torch.uint8 and got.shape == ref.shape and got.shape[0] == 3
    assert torch.equal(got, ref)
    assert got.stride() == (1, got.shape[2] * 3, 3)  # channel-first view of interleaved memory, like torchvision
    assert torch.equal(decode_rgb(bytearray(data)), ref) and torch.equal(decode_rgb(memoryview(data)), ref)


def test_cmyk_jpeg_and_png(jpeg_bytes):
    cmyk = jpeg_bytes(Image.fromarray(_face()).convert("CMYK"), quality=90)
    diff = (decode_rgb(cmyk).int() - _torchvision(cmyk).int()).abs().max()
    assert diff <= 1  # CMYK -> RGB rounding may differ by one level between the two libjpeg-turbo front ends
    f = io.BytesIO()
    Image.fromarray(_face(20, 30)).save(f, "PNG")
    png = decode_rgb(f.getvalue())
    assert torch.equal(png, torch.from_numpy(_face(20, 30).copy()).permute(2, 0, 1))


def test_refused_jpeg_goes_to_torchvision_and_errors_name_the_source(monkeypatch, jpeg_bytes):
    data = CASES["420"](jpeg_bytes)
    seen = []

    def refuse(buf, *a, **k):
        seen.append(len(buf))
        raise ValueError("simplejpeg refuses")

    monkeypatch.setattr(image_mod, "_sj_decode", refuse)
    assert torch.equal(decode_rgb(data), _torchvision(data)) and seen == [len(data)]
    with pytest.raises(DataError, match=r"faces/x\.jpg: cannot decode image \(\d+ bytes"):
        decode_rgb(data[: len(data) // 2], where="faces/x.jpg")  # truncated: torchvision refuses too
    with pytest.raises(DataError, match="empty image data"):
        decode_rgb(b"", where="faces/y.jpg")
