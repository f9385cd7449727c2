"""Augmentation and normalization on the device, with randomness derived from (seed, epoch, sample index).

The data loader hands over uint8 batches (``collate_faces``); this module turns them into the model's input on the
GPU (or CPU): resize to the model's input size when needed, AdaFace's augmentations (crop-and-pad, low resolution,
photometric), horizontal flip, then ``(x / 255 - mean) / std`` in the requested memory format.

Every random draw is a hash of ``(seed, epoch, dataset index, slot)`` (splitmix64), not a generator's state: a
sample gets the same augmentation whichever worker, rank or process count reads it, and a resumed run needs no
augmentation state at all.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from facezoo.data.image import resize_faces
from facezoo.train.config import AugmentConfig

__all__ = ["uniforms", "DeviceAugment"]

_MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's ``>>`` is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def uniforms(seed: int, epoch: int, ids: torch.Tensor, slots: int) -> torch.Tensor:
    """``[len(ids), slots]`` float64 values in [0, 1): splitmix64 of ``(seed, epoch, id, slot)``, on ``ids.device``."""
    ids = ids.to(torch.int64).reshape(-1, 1)
    slot = torch.arange(slots, dtype=torch.int64, device=ids.device).reshape(1, -1)
    x = ids * _signed(0x100000001B3) + slot * _signed(0xC2B2AE3D27D4EB4F)
    x = x + _signed(seed * 0x9E3779B1 + epoch * 0x85EBCA77 + 0x27D4EB2F165667C5)
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    x = x ^ _shr(x, 31)
    return _shr(x, 11).to(torch.float64) / float(1 << 53)


# slots of the per-sample draws
(
    _FLIP,
    _CROP,
    _CROP_AREA,
    _CROP_RATIO,
    _CROP_Y,
    _CROP_X,
    _LOWRES,
    _LOWRES_SIDE,
    _LOWRES_DOWN,
    _LOWRES_UP,
    _PHOTO,
    _BRIGHT,
    _CONTRAST,
    _SATURATION,
) = range(14)
_SLOTS = 14
_LOWRES_MODES = (("nearest", False), ("bilinear", False), ("bilinear", True), ("bicubic", False), ("bicubic", True))


class DeviceAugment:
    """uint8 (B, 3, H, W) batch + its dataset indices -> normalized float model input (see the module docstring)."""

    def __init__(
        self,
        cfg: AugmentConfig,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        channels_last: bool = True,
        training: bool = True,
    ) -> None:
        self.cfg, self.size, self.seed = cfg, (int(input_size[-2]), int(input_size[-1])), int(seed)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.training = training

    def __call__(self, images: torch.Tensor, ids: torch.Tensor, epoch: int) -> torch.Tensor:
        x = images.float()
        x = resize_faces(x, self.size)
        if self.training:
            u = uniforms(self.seed, epoch, ids.to(x.device), _SLOTS).to(torch.float32)
            c = self.cfg
            if c.crop:
                x = self._crop_and_pad(x, u, c.crop)
            if c.low_res:
                x = self._low_resolution(x, u, c.low_res)
            if c.photometric:
                x = self._photometric(x, u, c.photometric)
            if c.flip:
                flip = (u[:, _FLIP] < c.flip).view(-1, 1, 1, 1)
                x = torch.where(flip, x.flip(-1), x)
        x = (x - self.mean.to(x.device)) * self.inv_std.to(x.device)
        return x.contiguous(memory_format=self.memory_format)

    @staticmethod
    def _crop_and_pad(x: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
        """AdaFace: keep a random rectangle (area 20-100%, aspect 3/4-4/3) in place, zero the rest."""
        n, _, h, w = x.shape
        on = u[:, _CROP] < p
        area = (0.2 + 0.8 * u[:, _CROP_AREA]) * h * w
        ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, _CROP_RATIO])
        cw = torch.sqrt(area * ratio).round().clamp(1, w)
        ch = torch.sqrt(area / ratio).round().clamp(1, h)
        top = (u[:, _CROP_Y] * (h - ch + 1)).floor()
        left = (u[:, _CROP_X] * (w - cw + 1)).floor()
        ys = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
        inside = (
            (ys >= top.view(-1, 1, 1))
            & (ys < (top + ch).view(-1, 1, 1))
            & (xs >= left.view(-1, 1, 1))
            & (xs < (left + cw).view(-1, 1, 1))
        )
        keep = inside | ~on.view(-1, 1, 1)
        return x * keep.unsqueeze(1).to(x.dtype)

    @staticmethod
    def _low_resolution(x: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
        """AdaFace: shrink to 20-100% with a random interpolation, enlarge back with another."""
        h, w = x.shape[-2:]
        rows = torch.nonzero(u[:, _LOWRES] < p).flatten().tolist()
        if not rows:
            return x
        x = x.clone()
        for i in rows:
            side = max(1, int(float(0.2 + 0.8 * u[i, _LOWRES_SIDE]) * h))
            down = _LOWRES_MODES[min(int(float(u[i, _LOWRES_DOWN]) * len(_LOWRES_MODES)), len(_LOWRES_MODES) - 1)]
            up = _LOWRES_MODES[min(int(float(u[i, _LOWRES_UP]) * len(_LOWRES_MODES)), len(_LOWRES_MODES) - 1)]
            small = _resize(x[i : i + 1], (side, side), *down)
            x[i : i + 1] = _resize(small, (h, w), *up).clamp(0, 255)
        return x

    @staticmethod
    def _photometric(x: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
        """AdaFace: brightness, contrast and saturation jitter of 0.5 (factors in [0.5, 1.5]), in that order."""
        on = (u[:, _PHOTO] < p).view(-1, 1, 1, 1)
        b = (0.5 + u[:, _BRIGHT]).view(-1, 1, 1, 1)
        c = (0.5 + u[:, _CONTRAST]).view(-1, 1, 1, 1)
        s = (0.5 + u[:, _SATURATION]).view(-1, 1, 1, 1)
        y = (x * b).clamp(0, 255)
        gray = 0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3]
        y = ((y - gray.mean(dim=(2, 3), keepdim=True)) * c + gray.mean(dim=(2, 3), keepdim=True)).clamp(0, 255)
        gray = 0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3]
        y = ((y - gray) * s + gray).clamp(0, 255)
        return torch.where(on, y, x)


def _resize(x: torch.Tensor, size: tuple, mode: str, antialias: bool) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, antialias=antialias, align_corners=False)
