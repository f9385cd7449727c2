"""IResNet face backbones (insightface layout) with flatten / GAP / GWP / GDC heads, as timm models.

Model names are ``iresnet{18,34,50,100,200}[_gap|_gwp|_gdc][_k7]``:

* no head suffix -- insightface's baseline: the 512x7x7 map is flattened into ``Linear(25088, E)``;
* ``_gap`` / ``_gwp`` -- global average / Gaussian Weighted Pooling, then ``Linear(512, E)`` (Bhatta et al.);
* ``_gdc`` -- MobileFaceNet's global depthwise conv, then ``Linear(512, E)``;
* ``_k7`` -- a 7x7 first conv (stride 1, padding 3) instead of 3x3, as in the GWP authors' code.

Module names and state_dict keys are exactly those of insightface ``arcface_torch/backbones/iresnet.py``, so its
``backbone.pth`` files (and the GWP authors', whose GWP/GAP models add no keys) load without renaming. The model
outputs the E-dim embedding (not L2-normalized); ``num_classes=N`` adds a linear classifier on top of it.

``layout='adaface'`` (a ``create_model`` kwarg) builds the variant of AdaFace / TFace / CVLface "IR" backbones: stage
1's first block has a parameter-free strided-subsample shortcut and ``features`` has no affine parameters. Their
checkpoints (``input_layer`` / ``body`` / ``output_layer`` keys, Lightning ``.ckpt`` files included) are mapped to
facezoo's names on load and their BGR first conv is turned into an RGB one.

Follows the shape of timm's own model files: blocks, model class, checkpoint filter, cfgs, entrypoints.
"""

import logging
import pickle
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    register_notrace_module,
)
from timm.models._features import feature_take_indices

from facezoo.constants import EMBED_DIM, FACE_INPUT_SIZE, FACE_INTERPOLATION, FACE_MEAN, FACE_STD
from facezoo.errors import CheckpointError
from facezoo.layers import POOL_TYPES, VECTOR_POOL_TYPES, create_face_pool, pool_switch_error
from facezoo.models.checkpoints import (
    adaface_prefix,
    check_checkpoint_file,
    check_state_dict_fits,
    checkpoint_load_error,
    describe_state_dict,
    fill_learnable_pool,
    map_adaface_keys,
    strip_wrapper_prefix,
    unwrap_state_dict,
)
from facezoo.models.pretrained import (
    PretrainedInfo,
    check_tag_reachable,
    register_pretrained,
    resolve_tag,
    source_is_bgr,
    tag_download_error,
)

__all__ = ["IResNet", "IBasicBlock", "DEPTHS", "HEADS", "LAYOUTS", "model_names", "checkpoint_filter_fn"]

_logger = logging.getLogger(__name__)

#: blocks per stage for each depth, as insightface
DEPTHS: Dict[int, Tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
#: model-name suffix -> global_pool type
HEADS: Dict[str, str] = {"": "flatten", "_gap": "avg", "_gwp": "gwp", "_gdc": "gdc"}
#: ``layout`` values: whose variant of the architecture (and whose checkpoints) the model follows
LAYOUTS = ("insightface", "adaface")
#: channels of the stem / stage 1 and of stages 2-4, as insightface
WIDTHS = (64, 128, 256, 512)
_BN_EPS = 1e-5


def _map_side(side: int) -> int:
    """Side of the last map: four stride-2 3x3 convs with padding 1, each giving ceil(side / 2) (112 -> 7)."""
    for _ in range(4):
        side = (side + 1) // 2
    return side


def model_names() -> List[str]:
    """All registered IResNet model names, ordered by depth, head, stem."""
    return [f"iresnet{d}{h}{k}" for d in DEPTHS for h in HEADS for k in ("", "_k7")]


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, **dd: Any) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False, **dd)


class IBasicBlock(nn.Module):
    """insightface's pre-activation residual unit: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN (+ shortcut)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(in_chs, eps=_BN_EPS, **dd)
        self.conv1 = conv3x3(in_chs, out_chs, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, eps=_BN_EPS, **dd)
        self.prelu = nn.PReLU(out_chs, **dd)
        self.conv2 = conv3x3(out_chs, out_chs, stride, **dd)
        self.bn3 = nn.BatchNorm2d(out_chs, eps=_BN_EPS, **dd)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + shortcut


def make_stage(in_chs: int, out_chs: int, num_blocks: int, layout: str = "insightface", **dd: Any) -> nn.Sequential:
    """A stage whose first block halves the resolution with a (conv1x1 stride 2, BN) shortcut.

    With ``layout='adaface'`` a first block that keeps the width (stage 1: 64 -> 64) takes AdaFace's
    ``MaxPool2d(1, 2)`` shortcut instead: a parameter-free strided subsample ``x[:, :, ::2, ::2]``.
    """
    if layout == "adaface" and in_chs == out_chs:
        downsample: nn.Module = nn.MaxPool2d(kernel_size=1, stride=2)
    else:
        downsample = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=2, bias=False, **dd),
            nn.BatchNorm2d(out_chs, eps=_BN_EPS, **dd),
        )
    blocks = [IBasicBlock(in_chs, out_chs, stride=2, downsample=downsample, **dd)]
    blocks += [IBasicBlock(out_chs, out_chs, **dd) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


@register_notrace_module  # a torch.nn leaf for torch.fx, like the BatchNorm1d it extends
class FixedGammaBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose scale is the constant 1 (insightface's ``features`` layer).

    insightface sets ``features.weight`` to 1 with ``requires_grad=False``. Here it is a buffer: it stays in the
    state_dict under the same key (checkpoints load both ways) but is not a Parameter, so every Parameter trains.
    """

    def __init__(self, num_features: int, eps: float = _BN_EPS, device=None, dtype=None) -> None:
        super().__init__(num_features, eps=eps, affine=True, device=device, dtype=dtype)
        del self.weight
        self.register_buffer("weight", torch.ones(num_features, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if isinstance(getattr(self, "weight", None), torch.Tensor):
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class IResNet(nn.Module):
    """insightface IResNet with a choice of spatial head (flatten / avg / gwp / gdc) and stem kernel (3 / 7).

    forward_features -> (B, 512, H/16, W/16) after ``bn2``; forward_head pools, applies dropout, ``fc`` and the
    fixed-gamma BatchNorm1d ``features`` to give the E-dim embedding, then the optional ``classifier``.
    ``layout='adaface'`` gives the AdaFace / TFace / CVLface "IR" variant of the same network (see ``__init__``).
    """

    family = "iresnet"

    def __init__(
        self,
        layers: Sequence[int] = DEPTHS[50],
        head: str = "flatten",
        global_pool: Optional[str] = None,
        stem_kernel: int = 3,
        embed_dim: int = EMBED_DIM,
        num_classes: int = 0,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        img_size: Union[int, Tuple[int, int]] = 112,
        layout: str = "insightface",
        widths: Sequence[int] = WIDTHS,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """
        Args:
            layers: blocks per stage (see ``DEPTHS``).
            head: spatial head the embedding layer is built for: 'flatten' (insightface baseline), 'avg', 'gwp'
                or 'gdc'.
            global_pool: None (use ``head``), '' (no pooling: forward returns the 512-channel map), or a pooling
                type compatible with ``head`` (see ``reset_classifier``), as timm's ``global_pool`` argument.
            stem_kernel: first conv kernel, 3 (insightface) or 7 (GWP authors); stride 1 either way.
            embed_dim: embedding size E (insightface's ``num_features``).
            num_classes: 0 (default) outputs the embedding; N > 0 adds ``Linear(E, N)`` on top.
            in_chans: input channels.
            drop_rate: dropout before ``fc`` (insightface's ``dropout``). AdaFace trained its IR models with 0.4;
                pass ``drop_rate=0.4`` to fine-tune one as it was trained (dropout does nothing in eval mode).
            img_size: input size the head is built for (flatten/gdc/gwp use the map size img_size / 16).
            layout: 'insightface' (default) or 'adaface'. 'adaface' is the AdaFace / TFace / CVLface "IR" backbone
                (their ``Backbone(mode='ir')`` at depths 18-100): stage 1's first block has a parameter-free
                ``MaxPool2d(1, 2)`` shortcut instead of the conv downsample, and ``features`` is a BatchNorm1d
                without affine parameters (gamma 1, beta 0) instead of insightface's fixed gamma / trained beta.
                Everything else, module names included, is the same, so their checkpoints load with a key map.
                (Their IR-152 / IR-200 are bottleneck networks, widths 256-2048: not this architecture.)
            widths: channels of the stem and the 4 stages, insightface's (64, 128, 256, 512) by default. Narrower
                nets (e.g. (16, 32, 64, 128)) are for demos and tests on a CPU; no published checkpoint has them.
        """
        super().__init__()
        if head not in POOL_TYPES:
            raise ValueError(f"head must be one of {POOL_TYPES}, got {head!r}")
        if stem_kernel not in (3, 7):
            raise ValueError(f"stem_kernel must be 3 or 7, got {stem_kernel!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give the blocks of 4 stages, got {layers!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must give the channels of 4 stages, got {widths!r}")
        dd = dict(device=device, dtype=dtype)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.embed_dim = embed_dim
        self.num_features = widths[-1]
        self.head_hidden_size = embed_dim
        self.stem_kernel = stem_kernel
        self.layout = layout
        self.pool_type = head  # the pooling the fc was built for
        self.global_pool = head  # the pooling in use ('' = none, forward returns the map)
        self.grad_checkpointing = False
        map_size = (_map_side(img_size[0]), _map_side(img_size[1]))

        # stem
        chs = widths[0]
        self.conv1 = nn.Conv2d(in_chans, chs, stem_kernel, stride=1, padding=stem_kernel // 2, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(chs, eps=_BN_EPS, **dd)
        self.prelu = nn.PReLU(chs, **dd)
        # stages
        self.feature_info = [dict(num_chs=chs, reduction=1, module="prelu")]
        for i, (width, n) in enumerate(zip(widths, layers)):
            self.add_module(f"layer{i + 1}", make_stage(chs, width, n, layout=layout, **dd))
            chs = width
            self.feature_info.append(dict(num_chs=width, reduction=2 ** (i + 1), module=f"layer{i + 1}"))
        self.bn2 = nn.BatchNorm2d(chs, eps=_BN_EPS, **dd)
        # head
        self.pool, pooled_dim = create_face_pool(head, chs, map_size, **dd)
        self.dropout = nn.Dropout(p=drop_rate, inplace=True)
        self.fc = nn.Linear(pooled_dim, embed_dim, **dd)
        if layout == "adaface":
            self.features: nn.BatchNorm1d = nn.BatchNorm1d(embed_dim, eps=_BN_EPS, affine=False, **dd)
        else:
            self.features = FixedGammaBatchNorm1d(embed_dim, **dd)
        self.classifier = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()
        if global_pool is not None:
            self._set_global_pool(global_pool)

    @torch.no_grad()
    def init_weights(self) -> None:
        """insightface init: conv N(0, 0.1), BatchNorm 1/0, the rest PyTorch defaults; GWP kernel recomputed."""
        for m in self.modules():
            if m.__class__ is IResNet:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.reset_parameters()
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^conv1|^bn1|^prelu",
            blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)",
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "classifier" if name_only else self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier on top of the embedding; optionally change or remove ('') the pooling.

        The embedding layers (``fc``, ``features``) are kept. Pooling can switch among 'avg', 'gwp', 'gwp_sigma'
        and 'gwp_softmax' (same fc shape: the paper's "GWP model without its kernel" ablation, or a GWP model given a
        learnable kernel), or be removed with '' (forward then returns the
        feature map and the whole head, classifier included, is bypassed until a pooling is set again); 'flatten'
        and 'gdc' models keep their own head.
        """
        if global_pool is not None:
            self._set_global_pool(global_pool)
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.classifier = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.classifier.train(self.training)

    def _set_global_pool(self, global_pool: str) -> None:
        """Remove ('') or switch the pooling; only among ``VECTOR_POOL_TYPES``, whose fc input is the same."""
        if global_pool == self.global_pool:
            return
        if global_pool == "" or global_pool == self.pool_type:
            self.global_pool = global_pool
            return
        if global_pool in VECTOR_POOL_TYPES and self.pool_type in VECTOR_POOL_TYPES:
            dd = get_device_dtype(self)
            self.pool, _ = create_face_pool(global_pool, self.num_features, getattr(self.pool, "size", (7, 7)), **dd)
            self.pool.train(self.training)
            self.pool_type = self.global_pool = global_pool
            return
        raise ValueError(pool_switch_error(self.pool_type, global_pool))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
            x = self.layer4(x)
        return self.bn2(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        x = self.pool(x)
        x = self.dropout(x)
        x = self.features(self.fc(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the stem and stage outputs (indices 0..4, as ``feature_info``).

        ``norm=True`` applies ``bn2`` to the last stage's intermediate.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(5, indices)
        x = self.prelu(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        if stop_early:
            stages = stages[:max_index]
        for i, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if i in take_indices:
                intermediates.append(self.bn2(x) if norm and i == 4 else x)
        if intermediates_only:
            return intermediates
        if len(stages) == 4:
            x = self.bn2(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last wanted intermediate (and the head) to save compute."""
        take_indices, max_index = feature_take_indices(5, indices)
        for i in range(max(max_index, 0) + 1, 5):
            setattr(self, f"layer{i}", nn.Sequential())
        if prune_norm or max_index < 4:
            self.bn2 = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# --- checkpoint filter ----------------------------------------------------------------------------------------------


def checkpoint_filter_fn(
    state_dict: Dict[str, Any], model: IResNet, cache_dir: Optional[str] = None
) -> Dict[str, torch.Tensor]:
    """Make insightface / GWP-author / AdaFace-style checkpoints loadable and explain mismatches.

    Unwraps training containers and DDP / ``torch.compile`` / ``backbone.`` prefixes
    (:func:`facezoo.models.checkpoints.unwrap_state_dict`); maps AdaFace / TFace / CVLface "IR" checkpoints (also
    Lightning ``.ckpt`` ones, keys ``model.*``) onto a ``layout='adaface'`` model; strips CVLface's ``model.net.``
    prefix (its ``model.safetensors``, AdaFace or insightface layout inside) and turns a BGR first conv into an RGB
    one only where the source says BGR (``pretrained_model/model.yaml``); drops the GWP kernel if a
    checkpoint carries one, fills BatchNorm counters that old checkpoints lack, and raises a
    :class:`facezoo.errors.CheckpointError` naming the missing and unexpected keys and the model the checkpoint
    looks like when it does not fit ``model``.
    """
    state_dict, wrapper = strip_wrapper_prefix(state_dict)
    bgr = source_is_bgr(wrapper, model, cache_dir)
    state_dict = unwrap_state_dict(state_dict)
    prefix = adaface_prefix(state_dict)
    if prefix is not None:
        out = map_adaface_keys(state_dict, prefix, model, bgr=True if bgr is None else bgr)
    else:
        out = dict(state_dict)
        if bgr and "conv1.weight" in out:
            out["conv1.weight"] = out["conv1.weight"].flip(1)  # BGR -> RGB: every facezoo model takes RGB
        if getattr(model, "layout", "insightface") == "adaface" and (
            "layer1.0.downsample.0.weight" in out or "features.weight" in out
        ):
            raise CheckpointError(
                f"This is an insightface-layout checkpoint (it looks like {describe_state_dict(out)}), but the model "
                "was built with layout='adaface', which loads AdaFace/TFace/CVLface 'IR' checkpoints (and facezoo "
                "checkpoints of layout='adaface' models). Leave out layout='adaface' to load it."
            )
    expected = model.state_dict()
    if "pool.kernel" not in expected:
        out.pop("pool.kernel", None)  # a GWP kernel some exports store: facezoo recomputes it (other pool.* keys,
        # e.g. a GDC head's learned conv, must fit the model like any weight)
    out = fill_learnable_pool(out, expected, "pool.")
    for k in expected:  # only for BatchNorms the checkpoint has, so that describe_state_dict still sees its depth
        bn = k[: -len("num_batches_tracked")]
        if k.endswith(".num_batches_tracked") and k not in out and f"{bn}running_mean" in out:
            out[k] = torch.zeros((), dtype=torch.long)
    return check_state_dict_fits(out, model)


# --- configs and entrypoints ----------------------------------------------------------------------------------------


def _create_iresnet(variant: str, pretrained: bool = False, **kwargs: Any) -> IResNet:
    info = resolve_tag(variant, pretrained, kwargs, _PLAIN_CFGS)
    file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
    if pretrained and file:
        check_checkpoint_file(file)
    elif pretrained and info is not None:
        check_tag_reachable(info, kwargs.get("cache_dir"))
    try:
        return build_model_with_cfg(
            IResNet,
            variant,
            pretrained,
            pretrained_filter_fn=partial(checkpoint_filter_fn, cache_dir=kwargs.get("cache_dir")),
            feature_cfg=dict(out_indices=(0, 1, 2, 3, 4)),
            **kwargs,
        )
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # OSError: the Hub's lookup errors
        error = checkpoint_load_error(file, e) if pretrained and file else None
        if error is None and pretrained and info is not None and not file:
            error = tag_download_error(info, e)
        if error is None:
            raise
        raise error from e


def _cfg(fixed_input_size: bool, **kwargs: Any) -> Dict[str, Any]:
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
        "first_conv": "conv1",
        "classifier": "classifier",
        "fixed_input_size": fixed_input_size,
        **kwargs,
    }


_PAPERS = {
    "flatten": ("arXiv:1801.07698", "ArcFace: Additive Angular Margin Loss for Deep Face Recognition"),
    "avg": ("arXiv:1801.07698", "ArcFace (IResNet) with global average pooling"),
    "gwp": ("GWP", "Revisiting Linearization of Spatial Maps in SoTA Face Recognition Backbone"),
    "gdc": ("arXiv:1804.07573", "MobileFaceNets (GDC head) on IResNet"),
    "adaface": ("arXiv:2204.00964", "AdaFace: Quality Adaptive Margin for Face Recognition"),
}

#: every architecture's cfg without weights (what a model built from scratch carries)
_PLAIN_CFGS: Dict[str, Dict[str, Any]] = {
    name: _cfg(
        fixed_input_size=HEADS[head] in ("flatten", "gdc"),
        paper_ids=_PAPERS[HEADS[head]][0],
        paper_name=_PAPERS[HEADS[head]][1],
    )
    for depth in DEPTHS
    for head in HEADS
    for name in (f"iresnet{depth}{head}", f"iresnet{depth}{head}_k7")
}

# --- pretrained tags: CVLface's IR weights on the Hub ---------------------------------------------------------------

_CVLFACE_BOARD = "https://github.com/mk-minchul/CVLface/blob/main/cvlface/pretrained_models/README.md"
#: dataset name, and whose terms its weights follow (CVLface: "follow the license of the training dataset")
_CVLFACE_DATA = {
    "casia": ("CASIA-WebFace", "CASIA-WebFace"),
    "vgg2": ("VGGFace2", "VGGFace2"),
    "webface4m": ("WebFace4M", "WebFace260M"),
    "webface12m": ("WebFace12M", "WebFace260M"),
    "ms1mv2": ("MS1MV2", "MS1M"),
    "ms1mv3": ("MS1MV3", "MS1M"),
}
#: CVLface's performance board, columns in its order (its "CPFLW" is CPLFW, "IJBB@0.01" the IJB-B column)
_BOARD_COLUMNS = ("AVG", "LFW", "CPLFW", "CFP-FP", "CALFW", "AgeDB-30", "IJB-B@0.01", "IJB-C@0.01", "TinyFace R1",
                  "TinyFace R5")  # fmt: skip
#: (facezoo tag, CVLface repository, loss, layout, the board's row); each architecture's best tag first (timm's
#: default): the highest board AVG, which for these also has the highest IJB-B and IJB-C of its depth
_CVLFACE_IR = (
    ("iresnet18.adaface_webface4m", "adaface_ir18_webface4m", "AdaFace", "adaface",
     (89.55, 99.58, 92.28, 97.80, 95.52, 96.48, 92.75, 94.79, 66.07, 70.71)),
    ("iresnet18.adaface_vgg2", "adaface_ir18_vgg2", "AdaFace", "adaface",
     (88.12, 99.53, 91.73, 97.64, 93.90, 94.07, 90.07, 92.40, 64.62, 69.15)),
    ("iresnet18.adaface_casia", "adaface_ir18_casia", "AdaFace", "adaface",
     (72.40, 99.22, 87.00, 94.93, 92.65, 92.68, 30.36, 37.10, 56.20, 61.43)),
    ("iresnet50.adaface_webface4m", "adaface_ir50_webface4m", "AdaFace", "adaface",
     (91.48, 99.78, 94.17, 98.99, 95.98, 97.78, 95.49, 97.01, 70.20, 73.93)),
    ("iresnet50.adaface_ms1mv2", "adaface_ir50_ms1mv2", "AdaFace", "adaface",
     (89.96, 99.85, 92.85, 98.09, 96.07, 97.85, 94.86, 96.20, 64.99, 68.88)),
    ("iresnet50.adaface_casia", "adaface_ir50_casia", "AdaFace", "adaface",
     (77.43, 99.37, 90.02, 97.04, 93.43, 94.40, 46.04, 52.97, 59.44, 64.14)),
    ("iresnet100.adaface_webface12m", "adaface_ir101_webface12m", "AdaFace", "adaface",
     (92.13, 99.82, 94.57, 99.24, 96.12, 98.00, 96.46, 97.72, 72.42, 74.81)),
    ("iresnet100.adaface_webface4m", "adaface_ir101_webface4m", "AdaFace", "adaface",
     (91.98, 99.83, 94.63, 99.27, 96.05, 97.90, 96.10, 97.46, 72.13, 74.49)),
    ("iresnet100.arcface_webface4m", "arcface_ir101_webface4m", "ArcFace", "insightface",
     (91.76, 99.78, 94.35, 99.21, 96.00, 97.95, 95.83, 97.30, 71.03, 74.41)),
    ("iresnet100.adaface_ms1mv3", "adaface_ir101_ms1mv3", "AdaFace", "adaface",
     (90.99, 99.83, 93.92, 99.09, 96.02, 98.18, 95.82, 97.05, 67.95, 71.03)),
    ("iresnet100.adaface_ms1mv2", "adaface_ir101_ms1mv2", "AdaFace", "adaface",
     (90.90, 99.80, 93.53, 98.61, 96.12, 98.05, 95.59, 96.81, 68.11, 71.49)),
)  # fmt: skip


def _cvlface_info(name: str, repo: str, loss: str, layout: str, board: Tuple[float, ...]) -> PretrainedInfo:
    dataset, terms = _CVLFACE_DATA[name.rsplit("_", 1)[1]]
    hub_id = f"minchul/cvlface_{repo}"
    return PretrainedInfo(
        name=name,
        hub_id=hub_id,
        filename="model.safetensors",
        dataset=dataset,
        loss=loss,
        license="other",
        license_note=f"code MIT; weights follow {terms}'s terms: non-commercial research only",
        source="CVLface (mk-minchul/CVLface)",
        url=f"https://huggingface.co/{hub_id}",
        reported=dict(zip(_BOARD_COLUMNS, board)),
        reported_by="CVLface's performance board",
        notes=[
            "CVLface's board (" + _CVLFACE_BOARD + ") labels the IJB columns 'IJBB@0.01' / 'IJBC@0.01' (TAR at "
            "FAR 0.01) without saying whether 0.01 is a fraction or a percentage.",
            'CVLface\'s model cards say "license: mit" and "follow the license of the training dataset"; the '
            "datasets' terms are non-commercial research.",
        ],
        model_args={"layout": layout},
    )


_TAGS = [_cvlface_info(*row) for row in _CVLFACE_IR]
register_pretrained(*_TAGS)


def _tag_cfg(info: PretrainedInfo) -> Dict[str, Any]:
    paper = "flatten" if info.loss == "ArcFace" else "adaface"
    return _cfg(
        fixed_input_size=True,
        hf_hub_id=info.hub_id,
        hf_hub_filename=info.filename,
        license=info.license,
        origin_url=info.url,
        paper_ids=_PAPERS[paper][0],
        paper_name=_PAPERS[paper][1],
        description=f"{info.loss} on {info.dataset}, from {info.source}",
    )


default_cfgs = generate_default_cfgs({**{t.name: _tag_cfg(t) for t in _TAGS}, **_PLAIN_CFGS})


@register_model
def iresnet18(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18, flatten head (insightface baseline, Linear(25088, E)), 3x3 stem."""
    model_args = dict(layers=DEPTHS[18], head="flatten", stem_kernel=3)
    return _create_iresnet("iresnet18", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet18_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18, flatten head (insightface baseline, Linear(25088, E)), 7x7 stem."""
    model_args = dict(layers=DEPTHS[18], head="flatten", stem_kernel=7)
    return _create_iresnet("iresnet18_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet18_gap(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18, global average pooling head, 3x3 stem."""
    model_args = dict(layers=DEPTHS[18], head="avg", stem_kernel=3)
    return _create_iresnet("iresnet18_gap", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet18_gap_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18, global average pooling head, 7x7 stem."""
    model_args = dict(layers=DEPTHS[18], head="avg", stem_kernel=7)
    return _create_iresnet("iresnet18_gap_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet18_gwp(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18, Gaussian Weighted Pooling head (GWP paper), 3x3 stem."""
    model_args = dict(layers=DEPTHS[18], head="gwp", stem_kernel=3)
    return _create_iresnet("iresnet18_gwp", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet18_gwp_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18, Gaussian Weighted Pooling head (GWP paper), 7x7 stem."""
    model_args = dict(layers=DEPTHS[18], head="gwp", stem_kernel=7)
    return _create_iresnet("iresnet18_gwp_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet18_gdc(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18, global depthwise conv head (MobileFaceNet GDC), 3x3 stem."""
    model_args = dict(layers=DEPTHS[18], head="gdc", stem_kernel=3)
    return _create_iresnet("iresnet18_gdc", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet18_gdc_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18, global depthwise conv head (MobileFaceNet GDC), 7x7 stem."""
    model_args = dict(layers=DEPTHS[18], head="gdc", stem_kernel=7)
    return _create_iresnet("iresnet18_gdc_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet34(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34, flatten head (insightface baseline, Linear(25088, E)), 3x3 stem."""
    model_args = dict(layers=DEPTHS[34], head="flatten", stem_kernel=3)
    return _create_iresnet("iresnet34", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet34_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34, flatten head (insightface baseline, Linear(25088, E)), 7x7 stem."""
    model_args = dict(layers=DEPTHS[34], head="flatten", stem_kernel=7)
    return _create_iresnet("iresnet34_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet34_gap(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34, global average pooling head, 3x3 stem."""
    model_args = dict(layers=DEPTHS[34], head="avg", stem_kernel=3)
    return _create_iresnet("iresnet34_gap", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet34_gap_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34, global average pooling head, 7x7 stem."""
    model_args = dict(layers=DEPTHS[34], head="avg", stem_kernel=7)
    return _create_iresnet("iresnet34_gap_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet34_gwp(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34, Gaussian Weighted Pooling head (GWP paper), 3x3 stem."""
    model_args = dict(layers=DEPTHS[34], head="gwp", stem_kernel=3)
    return _create_iresnet("iresnet34_gwp", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet34_gwp_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34, Gaussian Weighted Pooling head (GWP paper), 7x7 stem."""
    model_args = dict(layers=DEPTHS[34], head="gwp", stem_kernel=7)
    return _create_iresnet("iresnet34_gwp_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet34_gdc(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34, global depthwise conv head (MobileFaceNet GDC), 3x3 stem."""
    model_args = dict(layers=DEPTHS[34], head="gdc", stem_kernel=3)
    return _create_iresnet("iresnet34_gdc", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet34_gdc_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34, global depthwise conv head (MobileFaceNet GDC), 7x7 stem."""
    model_args = dict(layers=DEPTHS[34], head="gdc", stem_kernel=7)
    return _create_iresnet("iresnet34_gdc_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet50(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50, flatten head (insightface baseline, Linear(25088, E)), 3x3 stem. insightface's r50."""
    model_args = dict(layers=DEPTHS[50], head="flatten", stem_kernel=3)
    return _create_iresnet("iresnet50", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet50_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50, flatten head (insightface baseline, Linear(25088, E)), 7x7 stem."""
    model_args = dict(layers=DEPTHS[50], head="flatten", stem_kernel=7)
    return _create_iresnet("iresnet50_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet50_gap(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50, global average pooling head, 3x3 stem."""
    model_args = dict(layers=DEPTHS[50], head="avg", stem_kernel=3)
    return _create_iresnet("iresnet50_gap", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet50_gap_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50, global average pooling head, 7x7 stem."""
    model_args = dict(layers=DEPTHS[50], head="avg", stem_kernel=7)
    return _create_iresnet("iresnet50_gap_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet50_gwp(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50, Gaussian Weighted Pooling head (GWP paper), 3x3 stem."""
    model_args = dict(layers=DEPTHS[50], head="gwp", stem_kernel=3)
    return _create_iresnet("iresnet50_gwp", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet50_gwp_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50, Gaussian Weighted Pooling head (GWP paper), 7x7 stem. The GWP paper's r50 (31.02M parameters)."""
    model_args = dict(layers=DEPTHS[50], head="gwp", stem_kernel=7)
    return _create_iresnet("iresnet50_gwp_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet50_gdc(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50, global depthwise conv head (MobileFaceNet GDC), 3x3 stem."""
    model_args = dict(layers=DEPTHS[50], head="gdc", stem_kernel=3)
    return _create_iresnet("iresnet50_gdc", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet50_gdc_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50, global depthwise conv head (MobileFaceNet GDC), 7x7 stem."""
    model_args = dict(layers=DEPTHS[50], head="gdc", stem_kernel=7)
    return _create_iresnet("iresnet50_gdc_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet100(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100, flatten head (insightface baseline, Linear(25088, E)), 3x3 stem. insightface's r100
    (MS1MV3 / Glint360K releases)."""
    model_args = dict(layers=DEPTHS[100], head="flatten", stem_kernel=3)
    return _create_iresnet("iresnet100", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet100_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100, flatten head (insightface baseline, Linear(25088, E)), 7x7 stem."""
    model_args = dict(layers=DEPTHS[100], head="flatten", stem_kernel=7)
    return _create_iresnet("iresnet100_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet100_gap(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100, global average pooling head, 3x3 stem."""
    model_args = dict(layers=DEPTHS[100], head="avg", stem_kernel=3)
    return _create_iresnet("iresnet100_gap", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet100_gap_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100, global average pooling head, 7x7 stem."""
    model_args = dict(layers=DEPTHS[100], head="avg", stem_kernel=7)
    return _create_iresnet("iresnet100_gap_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet100_gwp(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100, Gaussian Weighted Pooling head (GWP paper), 3x3 stem."""
    model_args = dict(layers=DEPTHS[100], head="gwp", stem_kernel=3)
    return _create_iresnet("iresnet100_gwp", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet100_gwp_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100, Gaussian Weighted Pooling head (GWP paper), 7x7 stem."""
    model_args = dict(layers=DEPTHS[100], head="gwp", stem_kernel=7)
    return _create_iresnet("iresnet100_gwp_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet100_gdc(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100, global depthwise conv head (MobileFaceNet GDC), 3x3 stem."""
    model_args = dict(layers=DEPTHS[100], head="gdc", stem_kernel=3)
    return _create_iresnet("iresnet100_gdc", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet100_gdc_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100, global depthwise conv head (MobileFaceNet GDC), 7x7 stem."""
    model_args = dict(layers=DEPTHS[100], head="gdc", stem_kernel=7)
    return _create_iresnet("iresnet100_gdc_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet200(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200, flatten head (insightface baseline, Linear(25088, E)), 3x3 stem."""
    model_args = dict(layers=DEPTHS[200], head="flatten", stem_kernel=3)
    return _create_iresnet("iresnet200", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet200_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200, flatten head (insightface baseline, Linear(25088, E)), 7x7 stem."""
    model_args = dict(layers=DEPTHS[200], head="flatten", stem_kernel=7)
    return _create_iresnet("iresnet200_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet200_gap(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200, global average pooling head, 3x3 stem."""
    model_args = dict(layers=DEPTHS[200], head="avg", stem_kernel=3)
    return _create_iresnet("iresnet200_gap", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet200_gap_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200, global average pooling head, 7x7 stem."""
    model_args = dict(layers=DEPTHS[200], head="avg", stem_kernel=7)
    return _create_iresnet("iresnet200_gap_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet200_gwp(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200, Gaussian Weighted Pooling head (GWP paper), 3x3 stem."""
    model_args = dict(layers=DEPTHS[200], head="gwp", stem_kernel=3)
    return _create_iresnet("iresnet200_gwp", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet200_gwp_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200, Gaussian Weighted Pooling head (GWP paper), 7x7 stem."""
    model_args = dict(layers=DEPTHS[200], head="gwp", stem_kernel=7)
    return _create_iresnet("iresnet200_gwp_k7", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet200_gdc(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200, global depthwise conv head (MobileFaceNet GDC), 3x3 stem."""
    model_args = dict(layers=DEPTHS[200], head="gdc", stem_kernel=3)
    return _create_iresnet("iresnet200_gdc", pretrained, **dict(model_args, **kwargs))


@register_model
def iresnet200_gdc_k7(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200, global depthwise conv head (MobileFaceNet GDC), 7x7 stem."""
    model_args = dict(layers=DEPTHS[200], head="gdc", stem_kernel=7)
    return _create_iresnet("iresnet200_gdc_k7", pretrained, **dict(model_args, **kwargs))
