"""Face Vision Transformers (insightface arcface_torch's ``VisionTransformer``) with flatten / GAP / GWP heads.

Model names are ``vitface_{t,s,b,l,h}[_gap|_gwp]``, insightface's ``vit_t``, ``vit_s``, ``vit_b``,
``vit_l_dp005_mask_005`` and ``vit_h``: a 112x112 face cut into 9x9 patches (a 12x12 grid of 144 tokens, the last
4 pixel rows and columns unused, as theirs), a learned position embedding, no class token, pre-norm blocks
(LayerNorm, 8-head attention with a bias-free qkv, ReLU6 MLP, drop path), a final LayerNorm and the head:

* no head suffix -- insightface's: the 144 tokens flattened into ``Linear(144 * D, D)`` (``feature.0``, 49% of
  vit_t / vit_s, 33% of vit_b / vit_l), then ``BatchNorm1d(D)``, ``Linear(D, E)``, ``BatchNorm1d(E)``;
* ``_gap`` / ``_gwp`` -- the tokens, as a (B, D, 12, 12) grid, average- or Gaussian-weighted-pooled (the GWP paper's
  kernel, built for the 12x12 grid with sigma scaled as for IResNet: 3 * 12 / 7) in place of ``feature.0``; the
  rest of the head is kept.

In training, a random share of the tokens (``mask_ratio``: 0.1 for t / s / b, 0.05 for l, 0 for h) is dropped
before the blocks and replaced by the learned ``mask_token`` after the final norm, as insightface does; eval mode
never masks. Module names are insightface's (``patch_embed.proj``, ``pos_embed``, ``blocks.N.*``, ``norm``,
``feature.0..3``, ``mask_token``), so arcface_torch ViT checkpoints load as they are, strictly, through timm.

facezoo's naming across families: ``embed_dim`` is the OUTPUT embedding size E (insightface's ``num_features``);
the token width D is ``width`` (insightface's and timm's ``embed_dim``). forward_features returns the token grid as
an NCHW map (B, D, 12, 12), as IResNet returns its 7x7 map, so the heads and the timm contract are the same.

``vitface_b_p8[_gap|_gwp]`` is CVLface's ViT-B (``models/vit``, ``name: 'base'``): 8x8 patches (a 14x14 grid of
196 tokens), D 512, depth 24, 16 heads, MLP ratio 3, no masking and no ``mask_token`` (``mask_token=False``); the
rest is the same network under the same names. Its tag ``vitface_b_p8.adaface_webface4m`` loads CVLface's
``model.safetensors`` (keys under ``model.net.``) from the Hub, the input channel order read from the repository's
``pretrained_model/model.yaml``.

Follows the shape of timm's own model files: blocks, model class, checkpoint filter, cfgs, entrypoints.
"""

import pickle
import re
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    register_notrace_function,
    register_notrace_module,
)
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from facezoo.constants import EMBED_DIM, FACE_INPUT_SIZE, FACE_INTERPOLATION, FACE_MEAN, FACE_STD
from facezoo.layers import VECTOR_POOL_TYPES, create_face_pool, pool_switch_error
from facezoo.models.checkpoints import (
    check_checkpoint_file,
    check_state_dict_fits,
    checkpoint_load_error,
    fill_learnable_pool,
    register_checkpoint_detector,
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

__all__ = [
    "VisionTransformerFace",
    "SIZES",
    "ARCHS",
    "CVLFACE_B_P8",
    "HEADS",
    "model_names",
    "checkpoint_filter_fn",
    "looks_like_vitface",
]

#: size letter -> insightface's settings: (width D, depth, drop_path_rate, mask_ratio); all have patch 9, 8 heads,
#: MLP ratio 4 (backbones/__init__.py: vit_t, vit_s, vit_b, vit_l_dp005_mask_005, vit_h)
SIZES: Dict[str, Tuple[int, int, float, float]] = {
    "t": (256, 12, 0.1, 0.1),
    "s": (512, 12, 0.1, 0.1),
    "b": (512, 24, 0.1, 0.1),
    "l": (768, 24, 0.05, 0.05),
    "h": (1024, 48, 0.1, 0.0),
}
#: CVLface's ViT-B (``models/vit``: ``VisionTransformer`` for ``name: 'base'``, configs/v1_base.yaml), the network of
#: its ``cvlface_adaface_vit_base_webface4m`` weights: patch 8 (a 14x14 grid of 196 tokens at 112x112), D 512,
#: depth 24, 16 heads, MLP ratio 3, drop path 0.1, no masking and so (as CVLface builds it) no ``mask_token``
CVLFACE_B_P8: Dict[str, Any] = dict(
    patch_size=8, width=512, depth=24, num_heads=16, mlp_ratio=3.0, drop_path_rate=0.1, mask_ratio=0.0, mask_token=False
)
#: insightface's name of each size
INSIGHTFACE_NAMES = {"t": "vit_t", "s": "vit_s", "b": "vit_b", "l": "vit_l_dp005_mask_005", "h": "vit_h"}
#: model-name suffix -> head (global_pool type)
HEADS: Dict[str, str] = {"": "flatten", "_gap": "avg", "_gwp": "gwp"}
_LN_EPS = 1e-5  # nn.LayerNorm's default, as insightface
_BN_EPS = 2e-5  # the head's BatchNorm1d, as insightface


def _arch_args() -> Dict[str, Dict[str, Any]]:
    """Each architecture (``vitface_{arch}``: 't', ..., 'h', 'b_p8') -> its model args, the head excepted."""
    archs: Dict[str, Dict[str, Any]] = {}
    for size, (width, depth, drop_path_rate, mask_ratio) in SIZES.items():
        archs[size] = dict(
            patch_size=9,
            width=width,
            depth=depth,
            num_heads=8,
            mlp_ratio=4.0,
            drop_path_rate=drop_path_rate,
            mask_ratio=mask_ratio,
        )
    archs["b_p8"] = dict(CVLFACE_B_P8)
    return archs


#: architecture -> model args (insightface's five sizes, then CVLface's ViT-B)
ARCHS: Dict[str, Dict[str, Any]] = _arch_args()


def model_names() -> List[str]:
    """All registered face ViT names, ordered by architecture, then head."""
    return [f"vitface_{a}{h}" for a in ARCHS for h in HEADS]


# --- blocks ---------------------------------------------------------------------------------------------------------


@torch.jit.unused
def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (False for devices autocast does not know, e.g. 'meta')."""
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None:
        return bool(available(device_type)) and torch.is_autocast_enabled(device_type)
    if device_type == "cuda":
        return torch.is_autocast_enabled()
    return device_type == "cpu" and torch.is_autocast_cpu_enabled()


@torch.jit.unused  # TorchScript has no autocast state to read: the scripted path is plain float32 attention
def _attention_autocast_off(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    with torch.autocast(device_type=q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


@register_notrace_function  # a single call for torch.fx (it reads the device and the autocast state)
def float32_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` in float32 whatever the autocast state, as insightface's attention.

    insightface casts q / k / v to float and computes the scores, softmax and weighted sum with autocast disabled;
    here it is ``scaled_dot_product_attention`` on the float32 tensors, outside autocast (which would otherwise
    run it in half precision). Returns float32.
    """
    q, k, v = q.float(), k.float(), v.float()
    if not torch.jit.is_scripting():
        if _autocast_enabled(q.device.type):
            return _attention_autocast_off(q, k, v, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class Attention(nn.Module):
    """Multi-head self-attention: bias-free ``qkv``, float32 attention core, ``proj`` with bias (insightface)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = float32_attention(qkv[0], qkv[1], qkv[2], self.attn_drop if self.training else 0.0)
        out = out.to(qkv.dtype).transpose(1, 2).reshape(b, n, c)  # back to the qkv dtype (half under autocast)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS, **dd)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.ReLU6, drop=proj_drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@register_notrace_function  # random: a single call for torch.fx
def random_keep(x: torch.Tensor, num_keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep ``num_keep`` tokens of each sample, chosen at random: (kept tokens (B, num_keep, D), their indices).

    insightface's ``random_masking``: per-sample uniform noise, the tokens of the smallest noise are kept.
    """
    noise = torch.rand(x.shape[0], x.shape[1], device=x.device)
    keep = torch.argsort(noise, dim=1)[:, :num_keep]
    return torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[2])), keep


@register_notrace_function
def fill_masked(x: torch.Tensor, keep: torch.Tensor, mask_token: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """All ``num_tokens`` tokens back in place: the kept ones from ``x`` at ``keep``, ``mask_token`` elsewhere."""
    full = mask_token.to(x.dtype).expand(x.shape[0], num_tokens, x.shape[2])
    return torch.scatter(full, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[2]), x)


@register_notrace_module  # checks the grid size: a single call for torch.fx
class TokenFlatten(nn.Module):
    """insightface's flatten 'pooling' of the token grid: (B, D, H, W) -> (B, H*W*D) in token order
    (token 0's D values first), the order of their ``reshape(B, num_patches * embed_dim)`` of (B, N, D) tokens."""

    def __init__(self, size: Tuple[int, int] = (12, 12)) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] != self.size[0] or x.shape[-1] != self.size[1]:
            raise ValueError(
                f"flatten head needs a {self.size[0]}x{self.size[1]} token grid, got {x.shape[-2]}x{x.shape[-1]}"
            )
        return x.flatten(2).transpose(1, 2).flatten(1)


# --- model ----------------------------------------------------------------------------------------------------------


class VisionTransformerFace(nn.Module):
    """insightface's face ViT with a choice of head (flatten / avg / gwp, or another face pool on the token grid).

    forward_features -> (B, D, 12, 12): the tokens after the final LayerNorm (with masked tokens refilled in
    training), as a grid; forward_head pools (``pool``), applies dropout and the ``feature`` layers
    (Linear(144 * D, D) or nothing, BN1d(D), Linear(D, E), BN1d(E)) to give the E-dim embedding (not
    L2-normalized), then the optional ``classifier``.
    """

    family = "vitface"

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 112,
        patch_size: int = 9,
        width: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        head: str = "flatten",
        global_pool: Optional[str] = None,
        embed_dim: int = EMBED_DIM,
        num_classes: int = 0,
        in_chans: int = 3,
        mask_ratio: float = 0.1,
        mask_token: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layout: str = "insightface",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """
        Args:
            img_size: input size (112: insightface's); the grid is ``img_size // patch_size`` (12).
            patch_size: patch side and stride of ``patch_embed.proj`` (9).
            width: token width D (insightface's / timm's ``embed_dim``).
            depth: number of blocks.
            num_heads: attention heads (8 for every insightface size).
            mlp_ratio: MLP hidden width / D (4).
            qkv_bias: bias in ``qkv`` (False, as insightface).
            head: the head the ``feature`` layers are built for: 'flatten' (insightface) or a pooling of the
                token grid, one of ``facezoo.layers.VECTOR_POOL_TYPES`` ('avg', 'gwp', 'gwp_sigma', 'gwp_softmax').
            global_pool: None (use ``head``), '' (no pooling: forward returns the (B, D, 12, 12) grid), or another
                pooling for a pooled head (e.g. a learnable GWP kernel on a ``_gwp`` model).
            embed_dim: embedding size E (insightface's ``num_features``).
            num_classes: 0 (default) outputs the embedding; N > 0 adds ``Linear(E, N)`` on top.
            in_chans: input channels.
            mask_ratio: share of tokens masked in training (insightface: 0.1 t / s / b, 0.05 l, 0 h).
            mask_token: whether the model has the learned ``mask_token`` (insightface's always do, even with no
                masking; CVLface's ViT has one only when it masks: False needs ``mask_ratio=0``).
            drop_rate: dropout before the head's ``feature`` layers (insightface has none: 0).
            pos_drop_rate, proj_drop_rate: insightface's ``drop_rate`` (after the position embedding; in the
                attention output and the MLP); 0 in all its models.
            attn_drop_rate: dropout on the attention weights (0).
            drop_path_rate: stochastic depth, rising linearly to this over the blocks (0.1 or 0.05 in insightface).
            layout: whose module names the model follows: 'insightface' (the only one; the argument exists so every
                face family is rebuilt with the same kwargs).
        """
        super().__init__()
        if head != "flatten" and head not in VECTOR_POOL_TYPES:
            raise ValueError(f"head must be 'flatten' or one of {VECTOR_POOL_TYPES}, got {head!r}")
        if layout != "insightface":
            raise ValueError(f"layout must be 'insightface' for a face ViT, got {layout!r}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
        if mask_ratio > 0 and not mask_token:
            raise ValueError(f"mask_ratio {mask_ratio!r} needs a mask_token to refill the masked tokens")
        dd = dict(device=device, dtype=dtype)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.embed_dim = embed_dim  # the OUTPUT embedding size E (facezoo's meaning across families)
        self.width = width  # the token width D
        self.num_features = width  # channels of forward_features' map (timm's meaning)
        self.head_hidden_size = embed_dim
        self.stem_kernel = patch_size  # the stem is the patch embedding: its kernel is the patch size
        self.patch_size = patch_size
        self.mask_ratio = float(mask_ratio)
        self.layout = layout
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, width, **dd)
        self.grid_size: Tuple[int, int] = tuple(self.patch_embed.grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_keep = int(self.num_patches * (1 - self.mask_ratio))  # insightface's len_keep
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, width, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # as insightface (stochastic depth)
        self.blocks = nn.Sequential(
            *[
                Block(width, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate, dpr[i], **dd)
                for i in range(depth)
            ]
        )
        self.feature_info = [dict(num_chs=width, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.norm = nn.LayerNorm(width, eps=_LN_EPS, **dd)
        # head
        self.pool_type = head  # the pooling the feature layers are built for ...
        self.global_pool = head  # ... and the one in use ('' = none, forward returns the grid)
        self.pool = self._make_pool(head)
        self.head_drop = nn.Dropout(drop_rate)
        flat = nn.Linear(self.num_patches * width, width, bias=False, **dd) if head == "flatten" else nn.Identity()
        self.feature = nn.Sequential(
            flat,  # feature.0: Identity when the grid is pooled (no parameters, so feature.1..3 keep their keys)
            nn.BatchNorm1d(width, eps=_BN_EPS, **dd),
            nn.Linear(width, embed_dim, bias=False, **dd),
            nn.BatchNorm1d(embed_dim, eps=_BN_EPS, **dd),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width, **dd)) if mask_token else None
        self.classifier = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()
        if global_pool is not None:
            self._set_global_pool(global_pool)

    def _dd(self) -> Dict[str, Any]:
        """The model's device and dtype, for modules built later (head resets)."""
        return dict(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def _make_pool(self, pool_type: str) -> nn.Module:
        if pool_type == "flatten":
            return TokenFlatten(self.grid_size)
        return create_face_pool(pool_type, self.width, self.grid_size, **self._dd())[0]

    @torch.no_grad()
    def init_weights(self) -> None:
        """insightface's init: Linear trunc-normal(0.02) with zero bias, LayerNorm 1 / 0, pos_embed trunc-normal(0.02),
        mask_token normal(0.02); the rest PyTorch's defaults (GWP kernels recomputed)."""
        if self.pos_embed.device.type == "meta":
            return
        trunc_normal_(self.pos_embed, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if m is self:
                continue
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """timm's convention for ViTs (insightface's own AdamW recipe decays every parameter)."""
        return {"pos_embed", "mask_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^pos_embed|^mask_token|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "classifier" if name_only else self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier on top of the embedding; optionally change or remove ('') the pooling.

        The ``feature`` layers are kept. A pooled head can switch to any other pooling of the grid (avg, gwp, the
        learnable GWP kernels); a flatten head keeps its own; '' bypasses the whole head (forward returns the grid).
        """
        if global_pool is not None:
            self._set_global_pool(global_pool)
        self.num_classes = num_classes
        dd = self._dd()
        self.classifier = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.classifier.train(self.training)

    def _set_global_pool(self, global_pool: str) -> None:
        """Remove ('') or switch the pooling; only among ``VECTOR_POOL_TYPES``, whose output width is D."""
        if global_pool in ("", self.global_pool, self.pool_type):
            self.global_pool = global_pool
            return
        if global_pool not in VECTOR_POOL_TYPES or self.pool_type not in VECTOR_POOL_TYPES:
            raise ValueError(pool_switch_error(self.pool_type, global_pool).replace("the fc layer", "feature.0"))
        pool = self._make_pool(global_pool)
        pool.requires_grad_(all(p.requires_grad for p in self.feature.parameters()))
        pool.train(self.training)
        self.pool = pool
        self.pool_type = self.global_pool = global_pool

    def _to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, D, H, W) grid."""
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.grid_size[0], self.grid_size[1])

    def _embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(x) + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed_patches(x)
        masked = self.training and self.mask_ratio > 0
        keep = torch.empty(0, dtype=torch.long)  # typed for TorchScript; set when masking
        if masked:
            x, keep = random_keep(x, self.num_keep)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        x = self.norm(x)
        mask_token = self.mask_token
        if mask_token is not None:
            if masked:
                x = fill_masked(x, keep, mask_token, self.num_patches)
            elif self.training:
                # no masking (mask_ratio 0): mask_token still joins the graph, with a zero gradient, so every
                # parameter gets one (DDP without find_unused_parameters, timm's backward check); values unchanged
                x = x + 0.0 * mask_token.to(x.dtype)
        return self._to_grid(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        x = self.pool(x)
        x = self.head_drop(x)
        x = self.feature(x)
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
        """Forward that also returns block outputs as (B, D, 12, 12) grids (indices as ``feature_info``).

        ``norm=True`` applies the final LayerNorm to each intermediate. No tokens are masked here (masking is
        part of the training forward only), so every intermediate is a full grid.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._embed_patches(x)
        blocks = self.blocks if not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(self._to_grid(y) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self._to_grid(self.norm(x)), intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last wanted intermediate (and the norm, the head) to save compute."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# --- checkpoints ----------------------------------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")


def _arch_shape(args: Dict[str, Any]) -> Tuple[int, int, int, int]:
    """(patch, tokens at 112x112, width, depth) of an architecture's model args: what its checkpoints show."""
    return args["patch_size"], (112 // args["patch_size"]) ** 2, args["width"], args["depth"]


def looks_like_vitface(state_dict: Dict[str, Any]) -> Optional[str]:
    """The facezoo ViT a state_dict's keys and shapes look like (e.g. 'vitface_b', 'vitface_t_gwp (or _gap)'), a
    description of an unregistered face ViT, or None when it is no insightface-style ViT."""
    if "patch_embed.proj.weight" not in state_dict or "pos_embed" not in state_dict:
        return None
    width = int(state_dict["pos_embed"].shape[-1])
    tokens = int(state_dict["pos_embed"].shape[-2])
    patch = int(state_dict["patch_embed.proj.weight"].shape[-1])
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))}
    depth = max(blocks) + 1 if blocks else 0
    head = "" if "feature.0.weight" in state_dict else "_gwp (or _gap)"
    size = next((a for a, v in ARCHS.items() if _arch_shape(v) == (patch, tokens, width, depth)), None)
    if size is None:
        return (
            f"a face ViT with width {width}, depth {depth}, patch {patch} and {tokens} tokens, which no registered "
            f"vitface size has (build one with model args, e.g. vitface_t{head.split(' ')[0]}(width={width}, "
            f"depth={depth}, patch_size={patch}))"
        )
    return f"vitface_{size}{head}"


def checkpoint_filter_fn(
    state_dict: Dict[str, Any], model: VisionTransformerFace, cache_dir: Optional[str] = None
) -> Dict[str, torch.Tensor]:
    """Make insightface arcface_torch and CVLface ViT checkpoints (and facezoo's) loadable, and explain mismatches.

    Strips CVLface's ``model.net.`` prefix (its ``model.safetensors``; the names inside are facezoo's) and turns a
    BGR patch embedding into an RGB one only where the source says BGR (``pretrained_model/model.yaml``).
    Unwraps training containers and DDP / ``torch.compile`` / ``backbone.`` prefixes, drops a stored GWP kernel
    (facezoo recomputes it), and raises a :class:`facezoo.errors.CheckpointError` naming the missing and unexpected
    keys (or mismatched shapes) and the model the checkpoint looks like when it does not fit ``model``.
    """
    state_dict, wrapper = strip_wrapper_prefix(state_dict)
    bgr = source_is_bgr(wrapper, model, cache_dir)
    state_dict = unwrap_state_dict(state_dict)
    expected = model.state_dict()
    out = {k: v for k, v in state_dict.items() if not (k == "pool.kernel" and k not in expected)}
    if bgr and "patch_embed.proj.weight" in out:
        out["patch_embed.proj.weight"] = out["patch_embed.proj.weight"].flip(1)  # BGR -> RGB: facezoo takes RGB
    out = fill_learnable_pool(out, expected, "pool.")  # a GWP checkpoint starts a learnable kernel at the paper's
    return check_state_dict_fits(out, model)


register_checkpoint_detector(looks_like_vitface)  # describe_state_dict names ViT checkpoints in every family


# --- configs and entrypoints ----------------------------------------------------------------------------------------


def _create_vitface(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    info = resolve_tag(variant, pretrained, kwargs, _PLAIN_CFGS)
    file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
    if pretrained and file:
        check_checkpoint_file(file)
    elif pretrained and info is not None:
        check_tag_reachable(info, kwargs.get("cache_dir"))
    out_indices = kwargs.pop("out_indices", 3)
    try:
        return build_model_with_cfg(
            VisionTransformerFace,
            variant,
            pretrained,
            pretrained_filter_fn=partial(checkpoint_filter_fn, cache_dir=kwargs.get("cache_dir")),
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # OSError: the Hub's lookup errors
        error = checkpoint_load_error(file, e) if pretrained and file else None
        if error is None and pretrained and info is not None and not file:
            error = tag_download_error(info, e)
        if error is None:
            raise
        raise error from e


def _cfg(patch_size: int = 9, **kwargs: Any) -> Dict[str, Any]:
    grid = FACE_INPUT_SIZE[-1] // patch_size
    return {
        "url": "",
        "num_classes": 0,
        "input_size": FACE_INPUT_SIZE,
        "pool_size": (grid, grid),  # the token grid: 112 // 9 (12), 112 // 8 (14)
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": FACE_INTERPOLATION,
        "mean": FACE_MEAN,
        "std": FACE_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "classifier",
        "fixed_input_size": True,  # the position embedding is learned for the token grid
        **kwargs,
    }


_PAPERS = {
    "flatten": ("arXiv:2010.11929", "An Image is Worth 16x16 Words (ViT), insightface arcface_torch face ViT"),
    "avg": ("arXiv:2010.11929", "insightface face ViT with global average pooling of the tokens"),
    "gwp": ("GWP", "Revisiting Linearization of Spatial Maps in SoTA Face Recognition Backbone (GWP on face ViT)"),
}

#: every architecture's cfg without weights (what a model built from scratch carries)
_PLAIN_CFGS: Dict[str, Dict[str, Any]] = {
    f"vitface_{arch}{suffix}": _cfg(
        patch_size=args["patch_size"], paper_ids=_PAPERS[head][0], paper_name=_PAPERS[head][1]
    )
    for arch, args in ARCHS.items()
    for suffix, head in HEADS.items()
}

# --- pretrained tags: CVLface's ViT weights on the Hub --------------------------------------------------------------

_CVLFACE_BOARD = "https://github.com/mk-minchul/CVLface/blob/main/cvlface/pretrained_models/README.md"
#: the columns of CVLface's performance board, in its order (its "CPFLW" is CPLFW, "IJBB@0.01" the IJB-B column)
_BOARD_COLUMNS = ("AVG", "LFW", "CPLFW", "CFP-FP", "CALFW", "AgeDB-30", "IJB-B@0.01", "IJB-C@0.01", "TinyFace R1",
                  "TinyFace R5")  # fmt: skip
_HUB_ID = "minchul/cvlface_adaface_vit_base_webface4m"

_TAGS = [
    PretrainedInfo(
        name="vitface_b_p8.adaface_webface4m",
        hub_id=_HUB_ID,
        filename="model.safetensors",
        dataset="WebFace4M",
        loss="AdaFace",
        license="other",
        license_note="code MIT; weights follow WebFace260M's terms: non-commercial research only",
        source="CVLface (mk-minchul/CVLface)",
        url=f"https://huggingface.co/{_HUB_ID}",
        # the board's row "ViT [1] | AdaFace [2] | WebFace4M"
        reported=dict(zip(_BOARD_COLUMNS, (92.48, 99.80, 94.97, 98.94, 96.03, 97.48, 95.60, 97.14, 74.79, 77.58))),
        reported_by="CVLface's performance board",
        notes=[
            "CVLface's board (" + _CVLFACE_BOARD + ") labels the IJB columns 'IJBB@0.01' / 'IJBC@0.01' (TAR at "
            "FAR 0.01) without saying whether 0.01 is a fraction or a percentage.",
            'CVLface\'s model cards say "license: mit" and "follow the license of the training dataset"; the '
            "datasets' terms are non-commercial research.",
        ],
    )
]
register_pretrained(*_TAGS)


def _tag_cfg(info: PretrainedInfo) -> Dict[str, Any]:
    arch = info.name.split(".", 1)[0]
    return dict(
        _PLAIN_CFGS[arch],
        hf_hub_id=info.hub_id,
        hf_hub_filename=info.filename,
        license=info.license,
        origin_url=info.url,
        paper_ids="arXiv:2204.00964",
        paper_name="AdaFace: Quality Adaptive Margin for Face Recognition",
        description=f"{info.loss} on {info.dataset}, from {info.source}",
    )


# the tags first: each is its architecture's default (timm's ``pretrained=True``)
default_cfgs = generate_default_cfgs({**{t.name: _tag_cfg(t) for t in _TAGS}, **_PLAIN_CFGS})


def _entry(arch: str, suffix: str, pretrained: bool, kwargs: Dict[str, Any]) -> VisionTransformerFace:
    variant = f"vitface_{arch}{suffix}"
    return _create_vitface(variant, pretrained, **dict(ARCHS[arch], head=HEADS[suffix], **kwargs))


@register_model
def vitface_t(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-T (insightface vit_t: D 256, depth 12, mask 0.1, drop path 0.1), flatten head. 19.14M parameters."""
    return _entry("t", "", pretrained, kwargs)


@register_model
def vitface_t_gap(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-T, token-average head (no flatten Linear)."""
    return _entry("t", "_gap", pretrained, kwargs)


@register_model
def vitface_t_gwp(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-T, Gaussian Weighted Pooling head over the 12x12 token grid (no flatten Linear)."""
    return _entry("t", "_gwp", pretrained, kwargs)


@register_model
def vitface_s(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-S (insightface vit_s: D 512, depth 12, mask 0.1, drop path 0.1), flatten head. 76.02M parameters."""
    return _entry("s", "", pretrained, kwargs)


@register_model
def vitface_s_gap(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-S, token-average head (no flatten Linear)."""
    return _entry("s", "_gap", pretrained, kwargs)


@register_model
def vitface_s_gwp(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-S, Gaussian Weighted Pooling head over the 12x12 token grid (no flatten Linear)."""
    return _entry("s", "_gwp", pretrained, kwargs)


@register_model
def vitface_b(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-B (insightface vit_b: D 512, depth 24, mask 0.1, drop path 0.1; insightface trains it with gradient
    checkpointing: model.grad_checkpointing in a recipe), flatten head. 113.83M parameters."""
    return _entry("b", "", pretrained, kwargs)


@register_model
def vitface_b_gap(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-B, token-average head (no flatten Linear)."""
    return _entry("b", "_gap", pretrained, kwargs)


@register_model
def vitface_b_gwp(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-B, Gaussian Weighted Pooling head over the 12x12 token grid (no flatten Linear)."""
    return _entry("b", "_gwp", pretrained, kwargs)


@register_model
def vitface_l(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-L (insightface vit_l_dp005_mask_005: D 768, depth 24, mask 0.05, drop path 0.05), flatten head.
    255.68M parameters."""
    return _entry("l", "", pretrained, kwargs)


@register_model
def vitface_l_gap(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-L, token-average head (no flatten Linear)."""
    return _entry("l", "_gap", pretrained, kwargs)


@register_model
def vitface_l_gwp(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-L, Gaussian Weighted Pooling head over the 12x12 token grid (no flatten Linear)."""
    return _entry("l", "_gwp", pretrained, kwargs)


@register_model
def vitface_h(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-H (insightface vit_h: D 1024, depth 48, no masking, drop path 0.1; trained with gradient
    checkpointing), flatten head. With no masking ``mask_token`` is kept (as insightface) with a zero gradient."""
    return _entry("h", "", pretrained, kwargs)


@register_model
def vitface_h_gap(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-H, token-average head (no flatten Linear)."""
    return _entry("h", "_gap", pretrained, kwargs)


@register_model
def vitface_h_gwp(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-H, Gaussian Weighted Pooling head over the 12x12 token grid (no flatten Linear)."""
    return _entry("h", "_gwp", pretrained, kwargs)


@register_model
def vitface_b_p8(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-B/8 (CVLface's ViT-B: patch 8, a 14x14 grid of 196 tokens, D 512, depth 24, 16 heads, MLP ratio 3,
    no masking and no mask_token, drop path 0.1), flatten head. Pretrained: ``vitface_b_p8.adaface_webface4m``
    (CVLface's AdaFace weights on WebFace4M, the default)."""
    return _entry("b_p8", "", pretrained, kwargs)


@register_model
def vitface_b_p8_gap(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-B/8 (CVLface's ViT-B), token-average head (no flatten Linear)."""
    return _entry("b_p8", "_gap", pretrained, kwargs)


@register_model
def vitface_b_p8_gwp(pretrained: bool = False, **kwargs: Any) -> VisionTransformerFace:
    """Face ViT-B/8 (CVLface's ViT-B), Gaussian Weighted Pooling head over the 14x14 token grid (no flatten
    Linear)."""
    return _entry("b_p8", "_gwp", pretrained, kwargs)
