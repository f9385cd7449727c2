"""EdgeFace (George et al., Idiap; IEEE T-BIOM 2024) face backbones as timm models.

EdgeFace is timm's EdgeNeXt with its classifier replaced by a 512-d embedding layer (``reset_classifier(512)``);
the ``_gamma_`` variants also factorize the Linear layers into two low-rank ones (:class:`LoRaLin`,
``linear1`` without bias then ``linear2``, rank ``max(2, int(min(in, out) * gamma))``). Model names and trunks, as
in Idiap's ``otroshi/edgeface`` (``backbones/__init__.py``):

* ``edgeface_base`` -- ``edgenext_base``;
* ``edgeface_s_gamma_05`` -- ``edgenext_small``, gamma 0.5;
* ``edgeface_xs_gamma_06`` -- ``edgenext_x_small``, gamma 0.6;
* ``edgeface_xxs`` -- ``edgenext_xx_small``.

The trunk is timm's own EdgeNeXt (built by timm's entrypoint, never rewritten here), kept as the child ``model`` as
Idiap's ``TimmFRWrapperV2`` does, so the state_dicts Idiap publishes (``model.stem.*`` ... ``model.head.fc.*``) load
strictly, without key mapping. Idiap's replacement skips only modules whose own (child) name contains ``head``; the
embedding layer is the child ``fc`` of ``head``, so it is factorized too in the gamma variants
(``model.head.fc.linear1`` / ``linear2``), which is what gives the parameter counts Idiap reports (3.65M, 1.77M).

The model outputs the 512-d embedding (not L2-normalized); ``num_classes=N`` adds a linear classifier on top of it.
Input: aligned 112x112 RGB, ``(x / 255 - 0.5) / 0.5`` (Idiap's transform: ``ToTensor`` + ``Normalize(0.5, 0.5)``).

Follows the shape of timm's own model files: blocks, model class, checkpoint filter, cfgs, entrypoints.
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from facezoo.constants import EMBED_DIM, FACE_INPUT_SIZE, FACE_INTERPOLATION, FACE_MEAN, FACE_STD
from facezoo.models.checkpoints import check_state_dict_fits, register_checkpoint_detector, unwrap_state_dict
from facezoo.models.pretrained import PretrainedInfo, register_pretrained, resolve_tag

__all__ = ["EdgeFace", "LoRaLin", "low_rank", "replace_linear_with_low_rank", "VARIANTS", "checkpoint_filter_fn"]

#: model name -> (timm EdgeNeXt entrypoint, low-rank ratio gamma or None), as Idiap's ``get_model``
VARIANTS: Dict[str, Tuple[str, Optional[float]]] = {
    "edgeface_base": ("edgenext_base", None),
    "edgeface_s_gamma_05": ("edgenext_small", 0.5),
    "edgeface_xs_gamma_06": ("edgenext_x_small", 0.6),
    "edgeface_xxs": ("edgenext_xx_small", None),
}


def model_names() -> List[str]:
    """The registered EdgeFace models, largest first (the order ``facezoo models`` lists them)."""
    return list(VARIANTS)


# --- blocks ---------------------------------------------------------------------------------------------------------


def low_rank(in_features: int, out_features: int, ratio: float) -> int:
    """EdgeFace's rank for a ``Linear(in_features, out_features)``: ``max(2, int(min(in, out) * ratio))``."""
    return max(2, int(min(in_features, out_features) * ratio))


class LoRaLin(nn.Module):
    """EdgeFace's low-rank linear layer: ``linear2(linear1(x))``, ``linear1`` (in -> rank) without bias."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.linear1 = nn.Linear(in_features, rank, bias=False, **dd)
        self.linear2 = nn.Linear(rank, out_features, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def replace_linear_with_low_rank(module: nn.Module, ratio: float) -> nn.Module:
    """Replace, in place and recursively, every ``nn.Linear`` child of ``module`` by a :class:`LoRaLin` of rank
    :func:`low_rank`; children whose own name contains ``head`` are kept (Idiap's rule, applied to the child's name,
    so the ``fc`` inside a ``head`` module is replaced). New layers take the replaced layer's device and dtype."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and "head" not in name:
            dd = dict(device=child.weight.device, dtype=child.weight.dtype)
            rank = low_rank(child.in_features, child.out_features, ratio)
            setattr(module, name, LoRaLin(child.in_features, child.out_features, rank, child.bias is not None, **dd))
        else:
            replace_linear_with_low_rank(child, ratio)
    return module


# --- model ----------------------------------------------------------------------------------------------------------


class EdgeFace(nn.Module):
    """timm's EdgeNeXt (child ``model``) with a 512-d embedding as its classifier, optional low-rank linears and an
    optional classifier on top of the embedding.

    forward_features -> (B, C, H/32, W/32) (3x3 at 112x112, C = the trunk's last width); forward_head pools (global
    average), applies the trunk's LayerNorm and ``model.head.fc`` to give the embedding, then ``classifier``.
    """

    #: face facts every facezoo face model states (read by ``facezoo models``, cards and export)
    family = "edgeface"
    #: module names follow Idiap's EdgeFace wrapper (``model.<timm edgenext>``), not bare timm EdgeNeXt keys
    layout = "edgeface"
    #: no IResNet-style stem kernel choice (EdgeNeXt's stem is a 4x4 stride-4 patch conv)
    stem_kernel = 0

    def __init__(
        self,
        trunk: str = "edgenext_xx_small",
        rank_ratio: Optional[float] = None,
        embed_dim: int = EMBED_DIM,
        num_classes: int = 0,
        global_pool: Optional[str] = None,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layout: str = "edgeface",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **trunk_kwargs: Any,
    ) -> None:
        """
        Args:
            trunk: the timm EdgeNeXt entrypoint (``edgenext_base``, ``edgenext_small``, ``edgenext_x_small``,
                ``edgenext_xx_small``); it builds the trunk, so EdgeNeXt itself is timm's.
            rank_ratio: gamma of the low-rank variants (0.5, 0.6), None for plain Linear layers.
            embed_dim: embedding size (EdgeFace's ``featdim``, 512).
            num_classes: 0 (default) outputs the embedding; N > 0 adds ``Linear(embed_dim, N)`` on top.
            global_pool: None or 'avg' (EdgeNeXt's global average pooling, what the embedding layer is trained for),
                or '' (no pooling: forward returns the trunk's feature map).
            in_chans: input channels.
            drop_rate: dropout before the embedding layer (timm EdgeNeXt's ``drop_rate``).
            drop_path_rate: stochastic depth of the trunk.
            layout: whose module names the model follows: 'edgeface' (the only one; the argument exists so every
                family's export config, which records ``layout``, rebuilds the model).
            trunk_kwargs: more EdgeNeXt arguments (e.g. ``depths``, ``dims`` for tiny test nets); unknown ones raise
                a TypeError, as timm models do.
        """
        super().__init__()
        if layout != "edgeface":
            raise ValueError(f"layout must be 'edgeface' for an EdgeFace model, got {layout!r}")
        if global_pool not in (None, "", "avg"):
            raise ValueError(f"global_pool must be 'avg' or '' for EdgeFace, got {global_pool!r}")
        dd = dict(device=device, dtype=dtype)
        self.trunk = trunk
        self.rank_ratio = rank_ratio
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.embed_dim = embed_dim
        self.head_hidden_size = embed_dim
        self.pool_type = "avg"  # the pooling the embedding layer is built for
        self.global_pool = "avg" if global_pool is None else global_pool  # in use ('' = none)

        self.model = timm.create_model(
            trunk,
            pretrained=False,
            num_classes=embed_dim,
            global_pool="avg",
            in_chans=in_chans,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            **dd,
            **trunk_kwargs,
        )
        if rank_ratio is not None:
            replace_linear_with_low_rank(self.model, rank_ratio)
        self.num_features = self.model.num_features
        self.feature_info = [dict(info, module=f"model.{info['module']}") for info in self.model.feature_info]
        self.classifier = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^model\.stem",
            blocks=r"^model\.stages\.(\d+)"
            if coarse
            else [
                (r"^model\.stages\.(\d+)\.downsample", (0,)),
                (r"^model\.stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^model\.norm_pre", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "classifier" if name_only else self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier on top of the embedding; optionally remove ('') or restore ('avg') the pooling.

        The embedding layer is kept: it is the trained part of EdgeFace's head (use ``num_classes=0`` for the
        embedding itself). With '' forward returns the trunk's feature map and the whole head is bypassed.
        """
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be 'avg' or '' for EdgeFace, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.classifier = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.classifier.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        x = self.model.forward_head(x)
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
        """The trunk's stage outputs (indices 0..3, as ``feature_info``); see timm's EdgeNeXt."""
        return self.model.forward_intermediates(
            x,
            indices=indices,
            norm=norm,
            stop_early=stop_early,
            output_fmt=output_fmt,
            intermediates_only=intermediates_only,
        )

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the trunk's stages after the last wanted intermediate (and the head) to save compute."""
        take_indices = self.model.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# --- checkpoint filter ----------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: EdgeFace) -> Dict[str, torch.Tensor]:
    """Make Idiap's EdgeFace state_dicts (and facezoo's own) loadable and explain mismatches.

    Idiap's ``.pt`` files are plain state_dicts with the model's own keys; containers and ``module.`` prefixes are
    unwrapped. A checkpoint that does not fit (e.g. a gamma checkpoint for a full-rank model) raises a
    :class:`facezoo.errors.CheckpointError` naming the missing and unexpected keys.
    """
    out = unwrap_state_dict(state_dict)
    low_rank_keys = any(".linear1.weight" in k for k in out)
    hint = (
        f"The checkpoint has {'low-rank (LoRaLin)' if low_rank_keys else 'full-rank'} linear layers; "
        f"this model is {model.trunk} with rank_ratio={model.rank_ratio}."
    )
    return check_state_dict_fits(out, model, hint)


def looks_like_edgeface(state_dict: Dict[str, Any]) -> Optional[str]:
    """The EdgeFace model a state_dict's keys look like (Idiap's ``model.<edgenext>`` names), or None."""
    if "model.stem.0.weight" not in state_dict or not any(k.startswith("model.head.fc") for k in state_dict):
        return None
    width = int(state_dict["model.stem.0.weight"].shape[0])
    low_rank_keys = any(k.endswith(".linear1.weight") for k in state_dict)
    widths = {"edgenext_base": 80, "edgenext_small": 48, "edgenext_x_small": 32, "edgenext_xx_small": 24}
    for name, (trunk, ratio) in VARIANTS.items():
        if widths[trunk] == width and (ratio is not None) == low_rank_keys:
            return name
    return f"an EdgeFace model (stem width {width}, {'low-rank' if low_rank_keys else 'full-rank'} linears)"


register_checkpoint_detector(looks_like_edgeface)  # describe_state_dict names EdgeFace checkpoints in every family


# --- configs and entrypoints ----------------------------------------------------------------------------------------


def _create_edgeface(variant: str, pretrained: bool = False, **kwargs: Any) -> EdgeFace:
    trunk, rank_ratio = VARIANTS[variant]
    resolve_tag(variant, pretrained, kwargs, _PLAIN_CFGS)  # no Idiap weights: the plain cfg, without their license
    return build_model_with_cfg(
        EdgeFace,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(dict(trunk=trunk, rank_ratio=rank_ratio), **kwargs),
    )


_HUB_REPOS = {
    "edgeface_base": "Idiap/EdgeFace-Base",
    "edgeface_s_gamma_05": "Idiap/EdgeFace-S-GAMMA",
    "edgeface_xs_gamma_06": "Idiap/EdgeFace-XS-GAMMA",
    "edgeface_xxs": "Idiap/EdgeFace-XXS",
}
#: the tag of Idiap's published weights (see README: the card does not say which WebFace subset each model used)
TAG = "idiap"


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "num_classes": 0,
        "input_size": FACE_INPUT_SIZE,
        "pool_size": (3, 3),
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": FACE_INTERPOLATION,
        "mean": FACE_MEAN,
        "std": FACE_STD,
        "first_conv": "model.stem.0",
        "classifier": "classifier",
        "paper_ids": "arXiv:2307.01838",
        "paper_name": "EdgeFace: Efficient Face Recognition Model for Edge Devices",
        "origin_url": "https://github.com/otroshi/edgeface",
        **kwargs,
    }


#: every architecture's cfg without weights (what a model built from scratch carries)
_PLAIN_CFGS: Dict[str, Dict[str, Any]] = {variant: _cfg() for variant in VARIANTS}
_TAG_CFGS = {
    f"{variant}.{TAG}": _cfg(
        hf_hub_id=_HUB_REPOS[variant],
        hf_hub_filename=f"{variant}.pt",  # a plain state_dict: timm loads it with torch.load(weights_only=True)
        license="cc-by-nc-sa-4.0",
    )
    for variant in VARIANTS
}
# the tags first: each is its architecture's default (timm's ``pretrained=True``)
default_cfgs = generate_default_cfgs({**_TAG_CFGS, **_PLAIN_CFGS})

#: accuracies (%) in the README of ``otroshi/edgeface`` ("Performance benchmarks of different variants"), mean of
#: their 10-fold protocol (the README gives "mean +- std")
_REPORTED: Dict[str, Dict[str, float]] = {
    "edgeface_base": {"LFW": 99.83, "CALFW": 96.07, "CPLFW": 93.75, "CFP-FP": 97.01, "AgeDB-30": 97.60},
    "edgeface_s_gamma_05": {"LFW": 99.78, "CALFW": 95.55, "CPLFW": 92.48, "CFP-FP": 95.74, "AgeDB-30": 97.03},
    "edgeface_xs_gamma_06": {"LFW": 99.73, "CALFW": 95.28, "CPLFW": 91.58, "CFP-FP": 94.71, "AgeDB-30": 96.08},
    "edgeface_xxs": {"LFW": 99.57, "CALFW": 94.83, "CPLFW": 90.27, "CFP-FP": 93.63, "AgeDB-30": 94.92},
}
_NOTES = [
    "Training data: the Hub cards say 'trained on Webface260M dataset (12M and 4M subsets)' (the same sentence, naming "
    "EdgeFace-Base, on every card); which subset each model used is not stated.",
    "Loss: CosFace, as summaries of the EdgeFace paper state; neither the Hub card nor the inference code says it.",
    "Hub repository and file names are those of Idiap's Hub collection as seen in third-party download scripts and "
    "card mirrors; the weights were not downloaded here (facezoo's test loads a reference network of the same keys).",
]

register_pretrained(
    *(
        PretrainedInfo(
            name=f"{variant}.{TAG}",
            hub_id=_HUB_REPOS[variant],
            filename=f"{variant}.pt",
            dataset="WebFace260M subsets (WebFace12M / WebFace4M)",
            loss="CosFace",
            license="cc-by-nc-sa-4.0",
            license_note="weights CC BY-NC-SA 4.0 (non-commercial, share-alike); Idiap's code BSD-3-Clause",
            source="Idiap Research Institute (otroshi/edgeface)",
            url=f"https://huggingface.co/{_HUB_REPOS[variant]}",
            reported=_REPORTED[variant],
            reported_by="https://github.com/otroshi/edgeface (README, 'Performance benchmarks of different variants')",
            notes=list(_NOTES),
        )
        for variant in VARIANTS
    )
)


@register_model
def edgeface_base(pretrained: bool = False, **kwargs: Any) -> EdgeFace:
    """EdgeFace-Base: timm ``edgenext_base`` with a 512-d embedding (18.23M parameters)."""
    return _create_edgeface("edgeface_base", pretrained=pretrained, **kwargs)


@register_model
def edgeface_s_gamma_05(pretrained: bool = False, **kwargs: Any) -> EdgeFace:
    """EdgeFace-S (gamma 0.5): timm ``edgenext_small``, low-rank linears of ratio 0.5 (3.65M parameters)."""
    return _create_edgeface("edgeface_s_gamma_05", pretrained=pretrained, **kwargs)


@register_model
def edgeface_xs_gamma_06(pretrained: bool = False, **kwargs: Any) -> EdgeFace:
    """EdgeFace-XS (gamma 0.6): timm ``edgenext_x_small``, low-rank linears of ratio 0.6 (1.77M parameters)."""
    return _create_edgeface("edgeface_xs_gamma_06", pretrained=pretrained, **kwargs)


@register_model
def edgeface_xxs(pretrained: bool = False, **kwargs: Any) -> EdgeFace:
    """EdgeFace-XXS: timm ``edgenext_xx_small`` with a 512-d embedding (1.24M parameters)."""
    return _create_edgeface("edgeface_xxs", pretrained=pretrained, **kwargs)
