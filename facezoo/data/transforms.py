"""Face transforms from a model's pretrained cfg: RGB uint8 (3, H, W) -> normalized float tensor.

Training adds a random horizontal flip and, with the probabilities you give, AdaFace's augmentations
(Kim et al. 2022, ``augmenter.py``): crop-and-pad (keep a RandomResizedCrop rectangle in place, zero the rest),
low resolution (shrink to 20-100% with a random interpolation, enlarge back with another) and photometric
(brightness/contrast/saturation jitter 0.5 in random order). AdaFace trains with 0.2 for all three.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import ColorJitter
from torchvision.transforms.v2 import functional as TF

from facezoo.constants import FACE_INPUT_SIZE, FACE_INTERPOLATION, FACE_MEAN, FACE_STD
from facezoo.data.image import to_uint8_chw

__all__ = ["FaceTransform", "create_face_transform", "resolve_face_data_config"]

_LOWRES_MODES = (
    (InterpolationMode.NEAREST, False),
    (InterpolationMode.BILINEAR, False),
    (InterpolationMode.BILINEAR, True),
    (InterpolationMode.BICUBIC, False),
    (InterpolationMode.BICUBIC, True),
)


def resolve_face_data_config(cfg_or_model: Union[nn.Module, dict, None]) -> dict:
    """``timm.data.resolve_data_config`` for a model, a pretrained cfg dict, or None (the facezoo default:
    3x112x112, mean = std = 0.5)."""
    from timm.data import resolve_data_config

    if cfg_or_model is None:
        cfg_or_model = {
            "input_size": FACE_INPUT_SIZE,
            "mean": FACE_MEAN,
            "std": FACE_STD,
            "interpolation": FACE_INTERPOLATION,
            "crop_pct": 1.0,
        }
    if isinstance(cfg_or_model, nn.Module):
        return resolve_data_config(model=cfg_or_model)
    if hasattr(cfg_or_model, "to_dict"):  # timm PretrainedCfg
        cfg_or_model = cfg_or_model.to_dict()
    return resolve_data_config(pretrained_cfg=dict(cfg_or_model))


class FaceTransform:
    """Picklable transform (DataLoader workers); random draws use torch's RNG, which workers seed per worker."""

    def __init__(
        self,
        input_size: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        is_training: bool,
        interpolation: str = "bilinear",
        flip_prob: float = 0.5,
        crop_prob: float = 0.0,
        low_res_prob: float = 0.0,
        photometric_prob: float = 0.0,
    ) -> None:
        for name, p in (
            ("flip_prob", flip_prob),
            ("crop_prob", crop_prob),
            ("low_res_prob", low_res_prob),
            ("photometric_prob", photometric_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.size = (int(input_size[1]), int(input_size[2]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255)
        self.is_training = is_training
        self.interpolation = (
            InterpolationMode(interpolation)
            if interpolation in {m.value for m in InterpolationMode}
            else InterpolationMode.BILINEAR
        )
        self.flip_prob = flip_prob if is_training else 0.0
        self.crop_prob = crop_prob if is_training else 0.0
        self.low_res_prob = low_res_prob if is_training else 0.0
        self.photometric_prob = photometric_prob if is_training else 0.0
        self.jitter = ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.0)

    # AdaFace's three augmentations, on uint8 (3, H, W)
    @staticmethod
    def crop_and_pad(
        x: torch.Tensor, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
    ) -> torch.Tensor:
        _, h, w = x.shape
        area = h * w
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):  # torchvision RandomResizedCrop.get_params
            target = area * torch.empty(1).uniform_(*scale).item()
            ar = math.exp(torch.empty(1).uniform_(*log_ratio).item())
            cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                i = int(torch.randint(0, h - ch + 1, (1,)))
                j = int(torch.randint(0, w - cw + 1, (1,)))
                out = torch.zeros_like(x)
                out[:, i : i + ch, j : j + cw] = x[:, i : i + ch, j : j + cw]
                return out
        return x

    @staticmethod
    def low_resolution(x: torch.Tensor) -> torch.Tensor:
        _, h, w = x.shape
        side = max(1, int(torch.empty(1).uniform_(0.2, 1.0).item() * h))
        down = _LOWRES_MODES[int(torch.randint(len(_LOWRES_MODES), (1,)))]
        up = _LOWRES_MODES[int(torch.randint(len(_LOWRES_MODES), (1,)))]
        small = TF.resize(x, [side, side], interpolation=down[0], antialias=down[1])
        return TF.resize(small, [h, w], interpolation=up[0], antialias=up[1])

    def __call__(self, image: Union[torch.Tensor, np.ndarray, Image.Image]) -> torch.Tensor:
        x = to_uint8_chw(image)
        if self.crop_prob and torch.rand(1).item() < self.crop_prob:
            x = self.crop_and_pad(x)
        if self.low_res_prob and torch.rand(1).item() < self.low_res_prob:
            x = self.low_resolution(x)
        if self.photometric_prob and torch.rand(1).item() < self.photometric_prob:
            x = self.jitter(x)
        if self.flip_prob and torch.rand(1).item() < self.flip_prob:
            x = x.flip(-1)
        if tuple(x.shape[-2:]) != self.size:
            x = TF.resize(x, list(self.size), interpolation=self.interpolation, antialias=True)
        return (x.float() - self.mean) * self.inv_std

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, training={self.is_training}, flip={self.flip_prob}, "
            f"crop={self.crop_prob}, low_res={self.low_res_prob}, photometric={self.photometric_prob}, "
            f"mean={tuple(round(v, 4) for v in (self.mean.flatten() / 255).tolist())}, "
            f"std={tuple(round(1 / v / 255, 4) for v in self.inv_std.flatten().tolist())})"
        )


def create_face_transform(
    cfg_or_model: Union[nn.Module, dict, None] = None,
    is_training: bool = False,
    flip_prob: float = 0.5,
    crop_prob: float = 0.0,
    low_res_prob: float = 0.0,
    photometric_prob: float = 0.0,
    **overrides: Any,
) -> FaceTransform:
    """Build the face transform for a model (or its pretrained cfg): input size and mean/std from
    ``timm.data.resolve_data_config``; for iresnet this is 112x112 and ``(x / 255 - 0.5) / 0.5``.

    Training: random flip (``flip_prob``) and AdaFace augmentations with ``crop_prob``, ``low_res_prob``,
    ``photometric_prob`` (AdaFace uses 0.2 each). ``overrides`` replace resolved cfg keys (e.g. ``input_size``).
    Evaluation (``is_training=False``) only resizes (if needed) and normalizes.
    """
    cfg = resolve_face_data_config(cfg_or_model)
    unknown = set(overrides) - {"input_size", "mean", "std", "interpolation"}
    if unknown:
        raise TypeError(f"create_face_transform got unexpected arguments {sorted(unknown)}")
    cfg.update(overrides)
    return FaceTransform(
        tuple(cfg["input_size"]),
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
        is_training,
        interpolation=cfg.get("interpolation", "bilinear"),
        flip_prob=flip_prob,
        crop_prob=crop_prob,
        low_res_prob=low_res_prob,
        photometric_prob=photometric_prob,
    )
