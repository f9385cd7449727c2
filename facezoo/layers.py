"""Pooling heads that turn the last map of a face backbone (B, C, H, W) into a vector (B, D).

* :class:`FlattenPool` -- insightface's baseline: flatten the whole 512x7x7 map (needs the fixed map size).
* :class:`GlobalAvgPool` -- GAP: mean over H, W.
* :class:`GaussianWeightedPool` -- GWP (Bhatta et al., "Revisiting Linearization of Spatial Maps in SoTA Face
  Recognition Backbone"): the map times a fixed, centre-weighted Gaussian kernel, then GAP.
* :class:`GlobalDepthwiseConv` -- GDC (MobileFaceNet): a learned depthwise HxW conv + BatchNorm, then flatten.
* :class:`LearnableSigmaGWP` (``'gwp_sigma'``) and :class:`SoftmaxKernelGWP` (``'gwp_softmax'``) -- the paper's
  future work, "adaptive normalized kernels": GWP whose kernel is learned (one sigma, or one softmax-normalized
  weight per map position), starting at the paper's Gaussian, so that at initialization they compute ``'gwp'``.

The pools hold no learnable spatial weights except GDC and the two learnable GWP kernels. Pools whose behaviour
depends on the input size are marked as FX leaf modules, so ``torch.fx`` (and timm's feature extraction) treats them
as single calls.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import to_2tuple
from timm.models import register_notrace_module

__all__ = [
    "gaussian_kernel",
    "gwp_sigma_for_size",
    "GaussianWeightedPool",
    "GlobalAvgPool",
    "FlattenPool",
    "GlobalDepthwiseConv",
    "LearnableSigmaGWP",
    "SoftmaxKernelGWP",
    "create_face_pool",
    "check_map_size",
    "POOL_TYPES",
    "VECTOR_POOL_TYPES",
    "count_linear_params",
    "pool_switch_error",
]

#: The paper's setting: sigma 3 on the 7x7 map of a 112x112 input.
GWP_REF_SIZE = 7
GWP_REF_SIGMA = 3.0

#: global_pool names understood by :func:`create_face_pool`; '' means "no pooling" (the map passes through).
POOL_TYPES = ("flatten", "avg", "gwp", "gdc", "gwp_sigma", "gwp_softmax")
#: poolings that give C features from a C-channel map at any map size: a model built for one can switch to another
#: (the fc shape is the same), e.g. a GWP checkpoint fine-tuned with a learnable kernel
VECTOR_POOL_TYPES = ("avg", "gwp", "gwp_sigma", "gwp_softmax")


def gwp_sigma_for_size(size: int, ref_sigma: float = GWP_REF_SIGMA, ref_size: int = GWP_REF_SIZE) -> float:
    """Sigma for a map side of ``size``: scaled with the map, ``sigma = ref_sigma * size / ref_size``.

    This keeps the Gaussian covering the same fraction of the aligned face at any input size (a 128x128 input gives
    an 8x8 map and sigma 3 * 8/7), so a GWP model trained at 112x112 weights the same facial regions elsewhere.
    """
    return ref_sigma * size / ref_size


def _gaussian_2d(
    height: int,
    width: int,
    sigma_y: float,
    sigma_x: float,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The normalized kernel (scriptable core of :func:`gaussian_kernel`)."""
    ys = torch.arange(height, device=device, dtype=torch.float64) - (height - 1) / 2.0
    xs = torch.arange(width, device=device, dtype=torch.float64) - (width - 1) / 2.0
    g = torch.exp(-(ys[:, None] ** 2) / (2 * sigma_y**2) - (xs[None, :] ** 2) / (2 * sigma_x**2))
    return (g / g.sum()).to(dtype)


def _gaussian_2d_learned(height: int, width: int, sigma_y: torch.Tensor, sigma_x: torch.Tensor) -> torch.Tensor:
    """:func:`_gaussian_2d` for tensor sigmas (differentiable), in float64 like it so both agree at equal sigma."""
    ys = torch.arange(height, device=sigma_y.device, dtype=torch.float64) - (height - 1) / 2.0
    xs = torch.arange(width, device=sigma_y.device, dtype=torch.float64) - (width - 1) / 2.0
    sy, sx = sigma_y.to(torch.float64), sigma_x.to(torch.float64)
    g = torch.exp(-(ys[:, None] ** 2) / (2 * sy**2) - (xs[None, :] ** 2) / (2 * sx**2))
    return g / g.sum()


def _weighted_mean(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``mean_{h,w}(x * kernel)`` as one matmul: (B, C, H, W) x (H, W) -> (B, C)."""
    height, width = x.shape[-2], x.shape[-1]
    weights = kernel.to(dtype=x.dtype).reshape(-1, 1) / (height * width)
    return torch.matmul(x.flatten(2), weights).flatten(1)


def gaussian_kernel(
    size: Union[int, Tuple[int, int]],
    sigma: Optional[Union[float, Tuple[float, float]]] = None,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The normalized Gaussian attention kernel of the GWP paper (eq. 2-3), shape (H, W), summing to 1.

    ``G[y, x] = exp(-((x - xc)^2 + (y - yc)^2) / (2 sigma^2))`` with the centre ``(size - 1) / 2`` (index
    ``size // 2`` for odd sizes such as 7, as in the paper; the exact middle for even sizes, keeping the kernel
    symmetric), then divided by its sum. ``sigma`` defaults to :func:`gwp_sigma_for_size` per axis.
    """
    h, w = to_2tuple(size)
    if sigma is None:
        sigma = (gwp_sigma_for_size(h), gwp_sigma_for_size(w))
    sy, sx = to_2tuple(sigma)
    if h < 1 or w < 1 or sy <= 0 or sx <= 0:
        raise ValueError(f"gaussian_kernel needs a positive size and sigma, got size={(h, w)} sigma={(sy, sx)}")
    return _gaussian_2d(h, w, float(sy), float(sx), torch.device(device or "cpu"), dtype or torch.get_default_dtype())


@register_notrace_module
class GaussianWeightedPool(nn.Module):
    """Gaussian Weighted Pooling: ``mean_{h,w}(x * G)`` with the fixed kernel ``G`` of :func:`gaussian_kernel`.

    This is eq. 4 of the paper followed by its global average pooling, so the output is the Gaussian-weighted
    average of the map divided by ``H * W`` (the authors' formulation; pretrained ``fc`` weights expect that scale).
    ``G`` is a non-persistent buffer: it follows ``.to()``, exports to ONNX, is not trained and is not stored in
    checkpoints. For a map of another size than the buffer, the kernel is rebuilt for that size with sigma scaled
    like the map (:func:`gwp_sigma_for_size`): the rule that lets GWP models take other input sizes.
    """

    def __init__(
        self,
        size: Union[int, Tuple[int, int]] = GWP_REF_SIZE,
        sigma: Optional[float] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """``sigma`` is for the built ``size``; None means the paper's 3 on a 7x7 map, scaled with the size."""
        super().__init__()
        self.size = to_2tuple(size)
        # sigma per axis at the built size; other map sizes scale it with the map
        self.sigma_y = float(sigma) if sigma is not None else gwp_sigma_for_size(self.size[0])
        self.sigma_x = float(sigma) if sigma is not None else gwp_sigma_for_size(self.size[1])
        self.register_buffer("kernel", torch.empty(self.size, device=device, dtype=dtype), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)compute the kernel, e.g. after ``to_empty()`` left the non-persistent buffer uninitialized."""
        if self.kernel.device.type == "meta":
            return
        with torch.no_grad():
            self.kernel.copy_(self.kernel_for(self.size[0], self.size[1], rebuild=True))

    def kernel_for(self, height: int, width: int, rebuild: bool = False) -> torch.Tensor:
        """The kernel for an (height, width) map: the buffer at the built size, else one rebuilt for that size."""
        if not rebuild and height == self.kernel.shape[0] and width == self.kernel.shape[1]:
            return self.kernel
        sigma_y = self.sigma_y * height / self.size[0]
        sigma_x = self.sigma_x * width / self.size[1]
        return _gaussian_2d(height, width, sigma_y, sigma_x, self.kernel.device, self.kernel.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _weighted_mean(x, self.kernel_for(x.shape[-2], x.shape[-1]))

    def extra_repr(self) -> str:
        return f"size={self.size}, sigma=({self.sigma_y:g}, {self.sigma_x:g})"


@register_notrace_module
class LearnableSigmaGWP(nn.Module):
    """GWP with one learnable sigma (``global_pool='gwp_sigma'``): the kernel stays a normalized Gaussian.

    ``sigma = sigma_init * exp(log_sigma_scale)``: positive for any value of the parameter, and exactly the paper's
    sigma at initialization (``log_sigma_scale = 0``), so the pool then computes what :class:`GaussianWeightedPool`
    computes. One parameter (``pool.log_sigma_scale`` in a model's state_dict); the kernel is rebuilt from it at
    every forward (49 exponentials on a 7x7 map), so gradients reach it. Other map sizes scale sigma with the map
    like GWP does.
    """

    def __init__(
        self,
        size: Union[int, Tuple[int, int]] = GWP_REF_SIZE,
        sigma: Optional[float] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """``sigma`` is the initial sigma at the built ``size``; None means the paper's (3 on a 7x7 map)."""
        super().__init__()
        self.size = to_2tuple(size)
        self.sigma_y = float(sigma) if sigma is not None else gwp_sigma_for_size(self.size[0])
        self.sigma_x = float(sigma) if sigma is not None else gwp_sigma_for_size(self.size[1])
        self.log_sigma_scale = nn.Parameter(torch.zeros((), device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        """Back to the paper's sigma."""
        with torch.no_grad():
            self.log_sigma_scale.zero_()

    def sigma(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The current (sigma_y, sigma_x) at the built size."""
        scale = torch.exp(self.log_sigma_scale)
        return scale * self.sigma_y, scale * self.sigma_x

    def kernel_for(self, height: int, width: int) -> torch.Tensor:
        """The normalized kernel for an (height, width) map, sigma scaled with the map."""
        sigma_y, sigma_x = self.sigma()
        return _gaussian_2d_learned(height, width, sigma_y * (height / self.size[0]), sigma_x * (width / self.size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _weighted_mean(x, self.kernel_for(x.shape[-2], x.shape[-1]))

    def extra_repr(self) -> str:
        return f"size={self.size}, sigma_init=({self.sigma_y:g}, {self.sigma_x:g})"


@register_notrace_module
class SoftmaxKernelGWP(nn.Module):
    """GWP with a free learnable kernel (``global_pool='gwp_softmax'``): ``softmax(logits)`` over the map positions.

    One logit per position of the built map (``pool.logits``, H x W: 49 parameters on 7x7), initialized at the log
    of the paper's normalized Gaussian, so the softmax is that Gaussian and the pool computes what
    :class:`GaussianWeightedPool` computes; training may move the weight anywhere on the map while it keeps summing
    to 1 (the paper's normalization). For another map size the logits are resized bilinearly first (an
    approximation of the rescaled kernel; the built size is exact).
    """

    def __init__(
        self,
        size: Union[int, Tuple[int, int]] = GWP_REF_SIZE,
        sigma: Optional[float] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """``sigma`` is the sigma of the initial Gaussian; None means the paper's (3 on a 7x7 map)."""
        super().__init__()
        self.size = to_2tuple(size)
        self.sigma_y = float(sigma) if sigma is not None else gwp_sigma_for_size(self.size[0])
        self.sigma_x = float(sigma) if sigma is not None else gwp_sigma_for_size(self.size[1])
        self.logits = nn.Parameter(torch.empty(self.size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Back to the log of the paper's Gaussian."""
        if self.logits.device.type == "meta":
            return
        g = _gaussian_2d(self.size[0], self.size[1], self.sigma_y, self.sigma_x, self.logits.device, torch.float64)
        with torch.no_grad():
            self.logits.copy_(g.log())

    def kernel_for(self, height: int, width: int) -> torch.Tensor:
        """The normalized kernel for an (height, width) map (softmax in float64, as GWP builds its kernel)."""
        logits = self.logits.to(torch.float64)
        if height != self.size[0] or width != self.size[1]:
            resized = F.interpolate(logits[None, None], size=(height, width), mode="bilinear", align_corners=True)
            logits = resized[0, 0]
        return torch.softmax(logits.flatten(), dim=0).reshape(height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _weighted_mean(x, self.kernel_for(x.shape[-2], x.shape[-1]))

    def extra_repr(self) -> str:
        return f"size={self.size}, sigma_init=({self.sigma_y:g}, {self.sigma_x:g})"


class GlobalAvgPool(nn.Module):
    """GAP: mean over the spatial axes, (B, C, H, W) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def check_map_size(name: str, x: torch.Tensor, size: Tuple[int, int]) -> None:
    """Raise a ValueError when the map ``x`` is not ``size`` (heads whose weights are built for one map size)."""
    if x.shape[-2] != size[0] or x.shape[-1] != size[1]:
        raise ValueError(
            f"{name} head needs a {size[0]}x{size[1]} feature map (a 112x112 input), got "
            f"{x.shape[-2]}x{x.shape[-1]}; use a '_gap' or '_gwp' model for other input sizes"
        )


@register_notrace_module
class FlattenPool(nn.Module):
    """insightface's baseline 'pooling': flatten the fixed-size map, (B, C, H, W) -> (B, C*H*W)."""

    def __init__(self, size: Union[int, Tuple[int, int]] = 7) -> None:
        super().__init__()
        self.size = to_2tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map_size("flatten", x, self.size)
        return torch.flatten(x, 1)


@register_notrace_module
class GlobalDepthwiseConv(nn.Module):
    """GDC (MobileFaceNet, Chen et al. 2018): depthwise HxW conv over the whole map + BatchNorm, then flatten.

    Unlike GWP the spatial weights are learned, one HxW kernel per channel.
    """

    def __init__(
        self,
        channels: int,
        size: Union[int, Tuple[int, int]] = 7,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.size = to_2tuple(size)
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(channels, channels, self.size, groups=channels, bias=False, **dd)
        self.bn = nn.BatchNorm2d(channels, eps=1e-5, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map_size("gdc", x, self.size)
        return torch.flatten(self.bn(self.conv(x)), 1)


def create_face_pool(
    pool_type: str,
    channels: int,
    map_size: Tuple[int, int] = (7, 7),
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[nn.Module, int]:
    """Build the pooling named ``pool_type`` and return it with its output width (fc input features)."""
    if pool_type == "flatten":
        return FlattenPool(map_size), channels * map_size[0] * map_size[1]
    if pool_type == "avg":
        return GlobalAvgPool(), channels
    if pool_type == "gwp":
        return GaussianWeightedPool(map_size, device=device, dtype=dtype), channels
    if pool_type == "gdc":
        return GlobalDepthwiseConv(channels, map_size, device=device, dtype=dtype), channels
    if pool_type == "gwp_sigma":
        return LearnableSigmaGWP(map_size, device=device, dtype=dtype), channels
    if pool_type == "gwp_softmax":
        return SoftmaxKernelGWP(map_size, device=device, dtype=dtype), channels
    raise ValueError(f"unknown global_pool {pool_type!r}; expected one of {POOL_TYPES} (or '' for no pooling)")


def pool_switch_error(pool_type: str, global_pool: str) -> str:
    """The message for a ``global_pool`` a head built for ``pool_type`` cannot switch to (each choice named once)."""
    allowed = [""] + (list(VECTOR_POOL_TYPES) if pool_type in VECTOR_POOL_TYPES else [pool_type])
    return (
        f"cannot switch a {pool_type!r} head to global_pool={global_pool!r}: the fc layer is built for {pool_type!r}; "
        f"allowed: {', '.join(repr(p) for p in allowed)}"
    )


def count_linear_params(module: nn.Module) -> int:
    """Parameters held by ``nn.Linear`` layers (the paper's 'Params. Linear' column)."""
    return sum(p.numel() for m in module.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False))
