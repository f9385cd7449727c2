"""MobileFaceNet face backbones (insightface ``arcface_torch`` layout) with GDC / GWP / GAP heads, as timm models.

Model names are ``mobilefacenet[_large][_gwp|_gap]``:

* ``mobilefacenet`` -- insightface's ``mbf`` (``get_mbf``: blocks (1, 4, 6, 2), width scale 2), 2,059,520
  parameters with its GDC head and a 512-d embedding; ``mobilefacenet_large`` -- ``mbf_large`` (blocks
  (2, 8, 12, 4), scale 4), 6,314,880 parameters;
* no head suffix -- MobileFaceNet's GDC head (Chen et al., 2018): a depthwise 7x7 conv + BatchNorm2d over the 512x7x7
  map, ``Linear(512, E)`` without bias, BatchNorm1d(E);
* ``_gwp`` / ``_gap`` -- the depthwise conv and its BatchNorm replaced by Gaussian Weighted Pooling / global average
  pooling (no spatial parameters; any input size), keeping ``Linear(512, E)`` + BatchNorm1d. ``global_pool=
  'gwp_sigma'`` / ``'gwp_softmax'`` give them a learnable kernel (:mod:`facezoo.layers`).

Module names and state_dict keys are insightface's (``layers.N...``, ``conv_sep``, ``features.layers.{0,2,3}``), so
an arcface_torch ``backbone.pth`` of an mbf model loads as it is. The model outputs the E-dim embedding (not
L2-normalized); ``num_classes=N`` adds a linear classifier on top of it. ``fp16=True`` runs the stages under CUDA
fp16 autocast and ``conv_sep`` and the head in float32, as insightface's ``MobileFaceNet(fp16=True)``.

Follows the shape of timm's own model files: blocks, model class, checkpoint filter, cfgs, entrypoints.
"""

import pickle
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype, to_2tuple
from timm.models import (
    build_model_with_cfg,
    checkpoint,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    register_notrace_module,
)
from timm.models._features import feature_take_indices

from facezoo.constants import EMBED_DIM, FACE_INPUT_SIZE, FACE_INTERPOLATION, FACE_MEAN, FACE_STD
from facezoo.layers import VECTOR_POOL_TYPES, check_map_size, create_face_pool, pool_switch_error
from facezoo.models.checkpoints import (
    check_checkpoint_file,
    check_state_dict_fits,
    checkpoint_load_error,
    fill_learnable_pool,
    register_checkpoint_detector,
    unwrap_state_dict,
)

__all__ = ["MobileFaceNet", "ConvBlock", "LinearBlock", "DepthWise", "Residual", "CONFIGS", "HEADS", "model_names"]

#: name -> (blocks of the 4 residual groups, width scale), as insightface's get_mbf / get_mbf_large
CONFIGS: Dict[str, Tuple[Tuple[int, int, int, int], int]] = {
    "mobilefacenet": ((1, 4, 6, 2), 2),
    "mobilefacenet_large": ((2, 8, 12, 4), 4),
}
#: model-name suffix -> head (global_pool type)
HEADS: Dict[str, str] = {"": "gdc", "_gwp": "gwp", "_gap": "avg"}
#: the heads a MobileFaceNet can be built with (the learnable GWP kernels included)
MBF_POOLS = ("gdc",) + VECTOR_POOL_TYPES
#: channels of the last map (conv_sep's output), fixed by insightface's GDC
NUM_FEATURES = 512


def model_names() -> List[str]:
    """All registered MobileFaceNet model names."""
    return [f"{base}{head}" for base in CONFIGS for head in HEADS]


def _map_side(side: int) -> int:
    """Side of the last map: four stride-2 3x3 convs with padding 1 (112 -> 7)."""
    for _ in range(4):
        side = (side + 1) // 2
    return side


# --- blocks (insightface's names: each keeps its layers in a ``layers`` Sequential) ----------------------------------


class ConvBlock(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> PReLU (one slope per channel)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.layers = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, kernel, stride, padding, groups=groups, bias=False, **dd),
            nn.BatchNorm2d(out_chs, **dd),
            nn.PReLU(out_chs, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d, no activation (the projection of a bottleneck; GDC's depthwise conv)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: Union[int, Tuple[int, int]] = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.layers = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, kernel, stride, padding, groups=groups, bias=False, **dd),
            nn.BatchNorm2d(out_chs, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``hidden`` -> depthwise 3x3 (stride) -> 1x1 linear projection (+ x).

    ``hidden`` is insightface's ``groups`` argument (the expanded width, which is also the depthwise conv's groups).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        hidden: int,
        stride: int = 2,
        residual: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_chs, hidden, **dd),
            ConvBlock(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden, **dd),
            LinearBlock(hidden, out_chs, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out + x if self.residual else out


class Residual(nn.Module):
    """``num_blocks`` residual stride-1 bottlenecks at ``channels`` (insightface's ``Residual``)."""

    def __init__(
        self,
        channels: int,
        num_blocks: int,
        hidden: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.layers = nn.Sequential(
            *[DepthWise(channels, channels, hidden, stride=1, residual=True, **dd) for _ in range(num_blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_notrace_module  # its map-size check depends on the input: one call for torch.fx
class GlobalDepthwiseBlock(LinearBlock):
    """GDC's spatial part: a depthwise conv over the whole HxW map + BatchNorm2d (keys ``layers.{0,1}``)."""

    def __init__(self, channels: int, size: Tuple[int, int], **dd: Any) -> None:
        super().__init__(channels, channels, kernel=size, groups=channels, **dd)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map_size("gdc", x, self.size)
        return self.layers(x)


class EmbeddingHead(nn.Module):
    """insightface's ``GDC`` module generalized over the spatial pooling: ``layers`` = [pool, Flatten, fc, BN1d].

    ``layers.0`` is the GDC depthwise block (keys ``layers.0.layers.{0,1}``) or a parameter-free GWP / GAP pool (or
    a learnable GWP kernel, keys ``layers.0.log_sigma_scale`` / ``layers.0.logits``); ``layers.2`` is
    ``Linear(512, E, bias=False)`` and ``layers.3`` ``BatchNorm1d(E)``, at insightface's indices. Dropout (no
    parameters, not in insightface) runs between the flatten and the fc.
    """

    def __init__(
        self,
        pool_type: str,
        embed_dim: int,
        map_size: Tuple[int, int],
        drop_rate: float = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.layers = nn.Sequential(
            make_pool(pool_type, map_size, **dd),
            nn.Flatten(1),
            nn.Linear(NUM_FEATURES, embed_dim, bias=False, **dd),
            nn.BatchNorm1d(embed_dim, **dd),
        )
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if i == 2:
                x = self.dropout(x)
            x = layer(x)
        return x


def make_pool(pool_type: str, map_size: Tuple[int, int], **dd: Any) -> nn.Module:
    """The head's ``layers.0`` for ``pool_type``: GDC's depthwise block, or one of facezoo's vector poolings."""
    if pool_type == "gdc":
        return GlobalDepthwiseBlock(NUM_FEATURES, map_size, **dd)
    if pool_type not in VECTOR_POOL_TYPES:
        raise ValueError(f"MobileFaceNet head must be one of {MBF_POOLS}, got {pool_type!r}")
    return create_face_pool(pool_type, NUM_FEATURES, map_size, **dd)[0]


# --- model ----------------------------------------------------------------------------------------------------------


class MobileFaceNet(nn.Module):
    """insightface's MobileFaceNet with a choice of head (gdc / gwp / avg, or a learnable GWP kernel).

    ``layers`` (a ModuleList of 8: stem conv, stage 1, then (downsampling bottleneck, residual group) x 3) ->
    ``conv_sep`` (1x1 to 512) gives forward_features' (B, 512, H/16, W/16) map; forward_head runs ``features`` (the
    embedding head) and the optional ``classifier``.
    """

    family = "mobilefacenet"

    def __init__(
        self,
        blocks: Sequence[int] = CONFIGS["mobilefacenet"][0],
        scale: int = CONFIGS["mobilefacenet"][1],
        head: str = "gdc",
        global_pool: Optional[str] = None,
        embed_dim: int = EMBED_DIM,
        num_classes: int = 0,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        img_size: Union[int, Tuple[int, int]] = 112,
        fp16: bool = False,
        layout: str = "insightface",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """
        Args:
            blocks: bottlenecks of stage 1 and the 3 residual groups ((1, 4, 6, 2) mbf, (2, 8, 12, 4) mbf_large).
                Stage 1 is one grouped 3x3 ConvBlock when ``blocks[0] == 1`` (as insightface), else a Residual.
            scale: width multiplier: stages have 64 * scale and 128 * scale channels.
            head: 'gdc' (MobileFaceNet), 'gwp', 'avg', 'gwp_sigma' or 'gwp_softmax' (see :mod:`facezoo.layers`).
            global_pool: None (use ``head``), '' (forward returns the 512-channel map), or a pooling interchangeable
                with ``head`` (see ``reset_classifier``), as timm's ``global_pool`` argument.
            embed_dim: embedding size E (insightface's ``num_features``).
            num_classes: 0 (default) outputs the embedding; N > 0 adds ``Linear(E, N)`` on top.
            in_chans: input channels.
            drop_rate: dropout before the head's fc (insightface's mbf has none: 0).
            img_size: input size the head is built for (GDC's kernel and GWP's kernel are the map size).
            fp16: insightface's fp16 forward: stages under CUDA fp16 autocast, ``conv_sep`` and the head in float32.
                Not needed with an outer autocast (facezoo's training engine); no effect on CPU.
            layout: whose module names the model follows: only 'insightface' (accepted so that every face model
                takes the face-facts kwargs that export records).
        """
        super().__init__()
        if head not in MBF_POOLS:
            raise ValueError(f"head must be one of {MBF_POOLS}, got {head!r}")
        if layout != "insightface":
            raise ValueError(f"MobileFaceNet has only layout='insightface', got {layout!r}")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must give 4 positive block counts, got {blocks!r}")
        dd = dict(device=device, dtype=dtype)
        img_size = to_2tuple(img_size)
        map_size = (_map_side(img_size[0]), _map_side(img_size[1]))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.embed_dim = embed_dim
        self.num_features = NUM_FEATURES
        self.head_hidden_size = embed_dim
        self.stem_kernel = 3
        self.layout = layout
        self.fp16 = fp16
        self.pool_type = head  # the pooling the head was built with
        self.global_pool = head  # the pooling in use ('' = none, forward returns the map)
        self.grad_checkpointing = False

        c1, c2 = 64 * scale, 128 * scale
        stage1: nn.Module
        if blocks[0] == 1:
            stage1 = ConvBlock(c1, c1, kernel=3, padding=1, groups=64, **dd)
        else:
            stage1 = Residual(c1, blocks[0], hidden=128, **dd)
        self.layers = nn.ModuleList(
            [
                ConvBlock(in_chans, c1, kernel=3, stride=2, padding=1, **dd),
                stage1,
                DepthWise(c1, c1, hidden=128, stride=2, **dd),
                Residual(c1, blocks[1], hidden=128, **dd),
                DepthWise(c1, c2, hidden=256, stride=2, **dd),
                Residual(c2, blocks[2], hidden=256, **dd),
                DepthWise(c2, c2, hidden=512, stride=2, **dd),
                Residual(c2, blocks[3], hidden=256, **dd),
            ]
        )
        self.conv_sep = ConvBlock(c2, NUM_FEATURES, **dd)
        self.features = EmbeddingHead(head, embed_dim, map_size, drop_rate, **dd)
        self.classifier = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        # feature points: index -> (last ``layers`` entry run, or 8 for conv_sep)
        self._feature_ends = (1, 3, 5, 8)
        self.feature_info = [
            dict(num_chs=c1, reduction=2, module="layers.1"),
            dict(num_chs=c1, reduction=4, module="layers.3"),
            dict(num_chs=c2, reduction=8, module="layers.5"),
            dict(num_chs=NUM_FEATURES, reduction=16, module="conv_sep"),
        ]
        self.init_weights()
        if global_pool is not None:
            self._set_global_pool(global_pool)

    @torch.no_grad()
    def init_weights(self) -> None:
        """insightface's init: conv and linear weights kaiming-normal (fan_out, relu), BatchNorm 1/0."""
        for m in self.modules():
            if m is self:
                continue
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()  # BatchNorm 1/0, PReLU 0.25, learnable GWP kernels at the paper's

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^layers\.0\.",
            blocks=[(r"^layers\.(\d+)" if coarse else r"^layers\.(\d+)\.layers\.(\d+)", None), (r"^conv_sep", (8,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "classifier" if name_only else self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier on top of the embedding; optionally change or remove ('') the pooling.

        The head's fc and BatchNorm1d are kept. Pooling can switch among 'avg', 'gwp', 'gwp_sigma' and 'gwp_softmax'
        (the fc input is 512 for all), or be removed with '' (forward then returns the map); GDC keeps its head.
        """
        if global_pool is not None:
            self._set_global_pool(global_pool)
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.classifier = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.classifier.train(self.training)

    def _set_global_pool(self, global_pool: str) -> None:
        if global_pool == self.global_pool:
            return
        if global_pool == "" or global_pool == self.pool_type:
            self.global_pool = global_pool
            return
        if global_pool in VECTOR_POOL_TYPES and self.pool_type in VECTOR_POOL_TYPES:
            old = self.features.layers[0]
            pool = make_pool(global_pool, getattr(old, "size", (7, 7)), **get_device_dtype(self))
            self.features.layers[0] = pool.train(self.training)
            self.pool_type = self.global_pool = global_pool
            return
        raise ValueError(pool_switch_error(self.pool_type, global_pool))

    def forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        """The ``layers`` (stem and stages), before ``conv_sep``."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.layers, x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_sep(self.forward_stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        x = self.features(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp16 and not torch.jit.is_scripting():
            return self._forward_fp16(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def _forward_fp16(self, x: torch.Tensor) -> torch.Tensor:
        """insightface's ``fp16=True`` forward: stages under CUDA fp16 autocast, the rest in float32 without it."""
        with torch.autocast("cuda", dtype=torch.float16, enabled=x.is_cuda):
            x = self.forward_stages(x)
        with torch.autocast("cuda", enabled=False):
            return self.forward_head(self.conv_sep(x.float()))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the feature points of ``feature_info`` (indices 0..3; 3 is ``conv_sep``).

        ``norm`` is accepted for timm's API; MobileFaceNet has no final norm (``conv_sep`` is its last layer).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self._feature_ends), indices)
        last = self._feature_ends[max_index] if stop_early else self._feature_ends[-1]
        for i, layer in enumerate(self.layers):
            if i > last:
                break
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(layer, x)
            else:
                x = layer(x)
            if i in self._feature_ends and self._feature_ends.index(i) in take_indices:
                intermediates.append(x)
        if last == 8:
            x = self.conv_sep(x)
            if 3 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the layers after the last wanted feature point (and the head) to save compute."""
        take_indices, max_index = feature_take_indices(len(self._feature_ends), indices)
        last = self._feature_ends[max_index]
        for i in range(last + 1, len(self.layers)):
            self.layers[i] = nn.Identity()
        if last < 8:
            self.conv_sep = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# --- checkpoints ----------------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: MobileFaceNet) -> Dict[str, torch.Tensor]:
    """Make insightface mbf checkpoints (and facezoo's own) loadable, and explain those that do not fit.

    Unwraps training containers and DDP / ``torch.compile`` / ``backbone.`` prefixes; a GWP / GAP checkpoint given
    to a learnable-kernel model starts the kernel at the paper's Gaussian; a mismatch raises a
    :class:`facezoo.errors.CheckpointError` naming the keys and the model the checkpoint looks like.
    """
    out = dict(unwrap_state_dict(state_dict))
    expected = model.state_dict()
    out = fill_learnable_pool(out, expected, "features.layers.0.")
    return check_state_dict_fits(out, model)


def describe_mobilefacenet(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """The MobileFaceNet a state_dict looks like ('mobilefacenet_large_gwp' ...), or None when it is none."""
    if "conv_sep.layers.0.weight" not in state_dict or "features.layers.2.weight" not in state_dict:
        return None
    width = state_dict["layers.0.layers.0.weight"].shape[0] if "layers.0.layers.0.weight" in state_dict else 0
    base = {128: "mobilefacenet", 256: "mobilefacenet_large"}.get(
        width, f"a MobileFaceNet of width scale {width // 64}"
    )
    if "features.layers.0.layers.0.weight" in state_dict:
        return base
    if "features.layers.0.logits" in state_dict:
        return f"{base}_gwp with global_pool='gwp_softmax'"
    if "features.layers.0.log_sigma_scale" in state_dict:
        return f"{base}_gwp with global_pool='gwp_sigma'"
    return f"{base}_gwp (or {base}_gap: same keys)"


register_checkpoint_detector(describe_mobilefacenet)


# --- configs and entrypoints ----------------------------------------------------------------------------------------


def _create_mobilefacenet(variant: str, pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
    if pretrained and file:
        check_checkpoint_file(file)
    try:
        return build_model_with_cfg(
            MobileFaceNet,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
            **kwargs,
        )
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        error = checkpoint_load_error(file, e) if pretrained and file else None
        if error is None:
            raise
        raise error from e


def _cfg(head: str, **kwargs: Any) -> Dict[str, Any]:
    papers = {
        "gdc": ("arXiv:1804.07573", "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification"),
        "gwp": ("GWP", "Revisiting Linearization of Spatial Maps in SoTA Face Recognition Backbone"),
        "avg": ("arXiv:1804.07573", "MobileFaceNets with global average pooling"),
    }
    return {
        "url": "",
        "num_classes": 0,
        "input_size": FACE_INPUT_SIZE,
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": FACE_INTERPOLATION,
        "mean": FACE_MEAN,
        "std": FACE_STD,
        "first_conv": "layers.0.layers.0",
        "classifier": "classifier",
        "fixed_input_size": head == "gdc",
        "paper_ids": papers[head][0],
        "paper_name": papers[head][1],
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {f"{base}{suffix}": _cfg(head) for base in CONFIGS for suffix, head in HEADS.items()}
)


def _build(variant: str, base: str, head: str, pretrained: bool, kwargs: Dict[str, Any]) -> MobileFaceNet:
    blocks, scale = CONFIGS[base]
    model_args = dict(blocks=blocks, scale=scale, head=head)
    return _create_mobilefacenet(variant, pretrained, **dict(model_args, **kwargs))


@register_model
def mobilefacenet(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet, GDC head: insightface's ``mbf`` (blocks (1, 4, 6, 2), scale 2; 2,059,520 parameters)."""
    return _build("mobilefacenet", "mobilefacenet", "gdc", pretrained, kwargs)


@register_model
def mobilefacenet_gwp(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet with Gaussian Weighted Pooling instead of GDC's depthwise conv + BatchNorm."""
    return _build("mobilefacenet_gwp", "mobilefacenet", "gwp", pretrained, kwargs)


@register_model
def mobilefacenet_gap(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet with global average pooling instead of GDC's depthwise conv + BatchNorm."""
    return _build("mobilefacenet_gap", "mobilefacenet", "avg", pretrained, kwargs)


@register_model
def mobilefacenet_large(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet-large, GDC head: insightface's ``mbf_large`` (blocks (2, 8, 12, 4), scale 4; 6,314,880)."""
    return _build("mobilefacenet_large", "mobilefacenet_large", "gdc", pretrained, kwargs)


@register_model
def mobilefacenet_large_gwp(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet-large with Gaussian Weighted Pooling instead of GDC's depthwise conv + BatchNorm."""
    return _build("mobilefacenet_large_gwp", "mobilefacenet_large", "gwp", pretrained, kwargs)


@register_model
def mobilefacenet_large_gap(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet-large with global average pooling instead of GDC's depthwise conv + BatchNorm."""
    return _build("mobilefacenet_large_gap", "mobilefacenet_large", "avg", pretrained, kwargs)
