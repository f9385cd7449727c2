"""Partial FC: a margin-softmax classifier whose class centers are sharded over ranks (insightface "v2").

An, Deng et al., "Partial FC: Training 10 Million Identities on a Single Machine" (ICCVW 2021) and "Killing
Two Birds with One Stone: Efficient and Robust Training of Face Recognition CNNs by Partial FC" (CVPR 2022).
Every rank holds a contiguous slice of the class centers (the first C % W ranks one extra row, as insightface),
all-gathers the embeddings (with gradient) and labels of the global batch, computes the cosine logits of its
classes (optionally only of a sampled subset that always contains the batch's positive classes) in float32,
applies the margin head and a softmax cross-entropy reduced across ranks. With one process it equals the head
followed by ``torch.nn.functional.cross_entropy``.

Checkpoints: the buffer ``shard_spec`` = [num_classes, world_size, rank, class_start, num_local] travels in the
state_dict, so ``gather_shards`` / ``reshard`` can rebuild the full matrix or cut it for another world size;
insightface shards (``weight`` only) are accepted too, in rank order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from facezoo.losses.base import MarginHead
from facezoo.losses.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum,
    dist_cross_entropy,
    gather_sizes,
    is_distributed,
    rank_and_world_size,
)

SPEC_KEY = "shard_spec"
SPEC_FIELDS = ("num_classes", "world_size", "rank", "class_start", "num_local")


class _L2Normalize(torch.autograd.Function):
    """Rows divided by max(norm, eps) (as ``F.normalize``); the backward divides by max(norm, grad_eps).

    The derivative of x / |x| is (I - y y^T) / |x|: unbounded for an embedding of (near) zero norm, which turns
    into Inf in a half-precision backbone. Flooring the norm at ``grad_eps`` in the backward only keeps that
    gradient bounded; it is the exact derivative for every row with norm >= grad_eps.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, grad_eps: float) -> torch.Tensor:
        norm = x.norm(dim=1, keepdim=True)
        y = x / norm.clamp_min(eps)
        ctx.save_for_backward(y, norm)
        ctx.grad_eps = grad_eps
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        y, norm = ctx.saved_tensors
        # (grad - y <y, grad>) / norm with one [rows, dim] allocation (einsum's row dot products need no temporary)
        dot = torch.einsum("ij,ij->i", y, grad).unsqueeze(1)
        out = torch.addcmul(grad, y, dot, value=-1)
        return out.div_(norm.clamp_min(ctx.grad_eps)), None, None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12, grad_eps: float = 1e-2) -> torch.Tensor:
    """Row-wise L2 normalization with a bounded backward for near-zero rows (see ``_L2Normalize``)."""
    return _L2Normalize.apply(x, eps, grad_eps)


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(class_start, num_local) of ``rank``: contiguous shards, the first ``num_classes % world_size`` one larger."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_range: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_classes < world_size:
        raise ValueError(
            f"Partial FC: num_classes ({num_classes}) must be >= the world size ({world_size}): "
            "every rank needs a class"
        )
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


class PartialFC(nn.Module):
    """Sharded class centers + margin head + cross-entropy; ``forward(embeddings, labels) -> loss``.

    Args:
        margin_loss: a facezoo margin head (``ArcFace``, ``CosFace``, ``CombinedMarginLoss``, ``AdaFace``,
            ``CurricularFace``, ``MagFace``) or any module ``(cosine [N, C_local], labels [N]) -> logits`` with
            labels -1 for rows whose class is elsewhere (insightface's ``CombinedMarginLoss`` works as is).
        embed_dim: E, the embedding dimension.
        num_classes: C, the total number of classes over all ranks.
        sample_rate: fraction of this shard's classes used per step (>= 1 class); every positive class of
            the global batch is always kept, the rest are random negatives (1.0 = no sampling).
        process_group: group over which the classes are sharded (default: the world, or one process when
            ``torch.distributed`` is not initialized at construction).
        compensate_ddp_average: True (default, insightface) multiplies the embedding gradient by the world
            size, because DDP / FSDP average the backbone's gradients over ranks: the backbone then receives
            the gradient of the global-batch loss. False returns exactly d loss / d embeddings, as a single
            process computing the whole global batch would (use it when nothing averages the gradients).
        init_std: class centers are initialized from N(0, init_std^2) (insightface: 0.01).

    Attributes: ``weight`` [num_local, E] (this rank's centers, rows class_start .. class_start+num_local-1),
    ``class_start``, ``num_local``, ``num_classes``, ``rank``, ``world_size``; after a sampled step,
    ``weight_index`` holds the local indices of the centers used.

    Every rank must call forward with the same number of steps (it runs collectives); local batch sizes may
    differ. Logits, softmax and loss are float32 even under ``torch.autocast``. The loss is the mean over the
    global batch, identical on every rank; per row it is ``logsumexp - target`` (insightface clamps the
    probability at 1e-30, i.e. caps a row's loss at 69; facezoo does not). Embeddings and centers are
    normalized as ``F.normalize`` does, but the backward floors the norm at 0.01 so that a zero-norm embedding
    gets a bounded gradient instead of ~1e12 (exact for norms >= 0.01). Do not wrap this module in DDP.
    """

    def __init__(
        self,
        margin_loss: nn.Module,
        embed_dim: int,
        num_classes: int,
        sample_rate: float = 1.0,
        *,
        process_group: Optional[Any] = None,
        compensate_ddp_average: bool = True,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if not isinstance(margin_loss, nn.Module):
            raise TypeError(f"PartialFC: margin_loss must be an nn.Module, got {type(margin_loss).__name__}")
        if int(embed_dim) < 1 or int(num_classes) < 1:
            raise ValueError(f"PartialFC: embed_dim and num_classes must be >= 1, got {embed_dim}, {num_classes}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"PartialFC: sample_rate must be in (0, 1], got {sample_rate}")
        self.margin_loss = margin_loss
        self.embed_dim, self.num_classes = int(embed_dim), int(num_classes)
        self.sample_rate = float(sample_rate)
        self.process_group = process_group
        self.compensate_ddp_average = bool(compensate_ddp_average)
        self.rank, self.world_size = rank_and_world_size(process_group)
        self.class_start, self.num_local = shard_range(self.num_classes, self.world_size, self.rank)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.weight = nn.Parameter(torch.normal(0.0, init_std, (self.num_local, self.embed_dim)))
        spec = [self.num_classes, self.world_size, self.rank, self.class_start, self.num_local]
        self.register_buffer(SPEC_KEY, torch.tensor(spec, dtype=torch.long))
        self.weight_index: Optional[torch.Tensor] = None

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, sample_rate={self.sample_rate}, "
            f"rank={self.rank}, world_size={self.world_size}, class_start={self.class_start}, "
            f"num_local={self.num_local}"
        )

    # ------------------------------------------------------------------ forward
    def _check_world(self) -> None:
        rank, world = rank_and_world_size(self.process_group)
        if (rank, world) != (self.rank, self.world_size):
            raise RuntimeError(
                f"PartialFC was built for rank {self.rank} of {self.world_size} but runs as rank {rank} of {world}: "
                "create it after torch.distributed is initialized (e.g. after accelerate's Accelerator())"
            )

    @torch.no_grad()
    def sample(self, local_labels: torch.Tensor, in_shard: torch.Tensor) -> torch.Tensor:
        """Pick this step's class centers (all positives + random negatives); remap ``local_labels`` in place.

        Returns the sorted local indices of the chosen centers (also kept as ``weight_index``).
        """
        positive = torch.unique(local_labels[in_shard], sorted=True)
        if self.num_sample > positive.numel():
            score = torch.rand(self.num_local, device=self.weight.device)
            score[positive] = 2.0
            index = torch.topk(score, k=self.num_sample)[1].sort()[0]
        else:
            index = positive
        local_labels[in_shard] = torch.searchsorted(index, local_labels[in_shard])
        self.weight_index = index
        return index

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin-softmax loss over the global batch (same value on every rank).

        Args:
            embeddings: [N_local, E] this rank's embeddings, not normalized (any float dtype).
            labels: [N_local] (or [N_local, 1]) global class ids in [0, num_classes).
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"PartialFC: embeddings must be [N, {self.embed_dim}], got {tuple(embeddings.shape)}")
        if labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels.view(-1)
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0] or labels.is_floating_point():
            raise ValueError(
                f"PartialFC: labels must be integer class ids of shape [{embeddings.shape[0]}], "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        self._check_world()
        group = self.process_group
        distributed = is_distributed(group)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            sizes = gather_sizes(embeddings.shape[0], embeddings.device, group) if distributed else None
            grad_scale = float(self.world_size) if self.compensate_ddp_average else 1.0
            emb = all_gather_with_grad(embeddings, group, sizes, grad_scale).float()
            glabels = all_gather_no_grad(labels.long(), group, sizes).clone()
            if glabels.numel() == 0:
                raise ValueError("PartialFC: the global batch is empty")
            lo, hi = int(glabels.min()), int(glabels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"PartialFC: labels must be class ids in [0, {self.num_classes - 1}], got values in [{lo}, {hi}]"
                )
            local = glabels - self.class_start
            in_shard = (local >= 0) & (local < self.num_local)
            local[~in_shard] = -1
            weight = self.weight
            if self.num_sample < self.num_local:
                weight = weight[self.sample(local, in_shard)]
            logits = F.linear(l2_normalize(emb), l2_normalize(weight.float())).clamp(-1, 1)
            head = self.margin_loss
            reg = None
            if isinstance(head, MarginHead):
                norms = emb.norm(dim=1)
                kwargs: dict[str, Any] = {"global_batch": True}
                if head.needs_norms:
                    kwargs["norms"] = norms
                if head.needs_target_cosine:
                    kwargs["target_cosine"] = self._target_cosine(logits, local)
                logits = head(logits, local, **kwargs)
                reg = head.regularizer(norms)
            else:
                logits = head(logits, local)
            loss = dist_cross_entropy(logits.float(), local, group)
            if reg is not None:
                if distributed:
                    # every rank adds the same term computed on the gathered norms, and the all-gather's backward
                    # sums the ranks' gradients: let each rank contribute 1/W of its gradient
                    w = float(self.world_size)
                    reg = reg / w + (reg - reg / w).detach()
                loss = loss + reg
        return loss

    def _target_cosine(self, logits: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """Cosine of every row with its own class, also for rows whose class is on another rank (no grad)."""
        with torch.no_grad():
            rows = torch.where(local != -1)[0]
            tc = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
            tc[rows] = logits[rows, local[rows]]
            return all_reduce_sum(tc, self.process_group)

    # ------------------------------------------------------------------ checkpoints
    @torch.no_grad()
    def gather_weight(self) -> torch.Tensor:
        """The full class-center matrix [num_classes, E] on every rank (a collective when distributed)."""
        self._check_world()
        w = self.weight.detach()
        if not is_distributed(self.process_group):
            return w.clone()
        sizes = [shard_range(self.num_classes, self.world_size, r)[1] for r in range(self.world_size)]
        return all_gather_no_grad(w, self.process_group, sizes)

    @torch.no_grad()
    def load_full_weight(self, weight: torch.Tensor) -> None:
        """Copy this rank's rows out of a full class-center matrix [num_classes, E]."""
        if tuple(weight.shape) != (self.num_classes, self.embed_dim):
            raise ValueError(
                f"PartialFC.load_full_weight: expected shape ({self.num_classes}, {self.embed_dim}), "
                f"got {tuple(weight.shape)}"
            )
        self.weight.copy_(weight[self.class_start : self.class_start + self.num_local])

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + SPEC_KEY
        if key in state_dict:
            saved = [int(v) for v in state_dict[key].tolist()]
            spec = dict(zip(SPEC_FIELDS, saved))
            if (spec["num_classes"], spec["class_start"], spec["num_local"]) != (
                self.num_classes,
                self.class_start,
                self.num_local,
            ):
                raise RuntimeError(
                    f"PartialFC: the checkpoint shard holds classes [{spec['class_start']}, "
                    f"{spec['class_start'] + spec['num_local']}) of {spec['num_classes']} (rank {spec['rank']} of "
                    f"{spec['world_size']}), this module holds [{self.class_start}, "
                    f"{self.class_start + self.num_local}) "
                    f"of {self.num_classes} (rank {self.rank} of {self.world_size}). Re-shard the saved shards with "
                    "facezoo.losses.reshard(state_dicts, world_size) or load the full matrix with load_full_weight()"
                )
            # rank / world size are bookkeeping of the run that saved it; keep ours
            state_dict[key] = getattr(self, SPEC_KEY).clone()
        elif prefix + "weight" in state_dict:
            # an insightface shard (weight only): accept it when the shape fits
            state_dict[key] = getattr(self, SPEC_KEY).clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


StateDict = Mapping[str, torch.Tensor]


def _shard_specs(state_dicts: Sequence[StateDict], prefix: str) -> list[dict[str, int]]:
    """Class range of each shard, from ``shard_spec`` or, for insightface shards, from list order."""
    if not state_dicts:
        raise ValueError("gather_shards: no shard state_dicts given")
    wkey, skey = prefix + "weight", prefix + SPEC_KEY
    for i, sd in enumerate(state_dicts):
        if wkey not in sd:
            raise KeyError(f"gather_shards: shard {i} has no {wkey!r} (keys: {sorted(sd)[:8]}...)")
        if sd[wkey].dim() != 2:
            raise ValueError(f"gather_shards: shard {i} {wkey!r} must be 2-D, got shape {tuple(sd[wkey].shape)}")
    with_spec = [skey in sd for sd in state_dicts]
    if all(with_spec):
        specs = []
        for i, sd in enumerate(state_dicts):
            values = [int(v) for v in sd[skey].reshape(-1).tolist()]
            if len(values) != len(SPEC_FIELDS):
                raise ValueError(f"gather_shards: shard {i} {skey!r} must hold {SPEC_FIELDS}, got {values}")
            spec = dict(zip(SPEC_FIELDS, values))
            if sd[wkey].shape[0] != spec["num_local"]:
                raise ValueError(
                    f"gather_shards: shard {i} {wkey!r} has {sd[wkey].shape[0]} rows but its {skey} says "
                    f"{spec['num_local']}"
                )
            specs.append(spec)
        return specs
    if any(with_spec):
        raise ValueError(f"gather_shards: some shards carry {skey!r} and some do not; pass one kind")
    # insightface: weight only, list order = rank order
    world = len(state_dicts)
    num_classes = sum(int(sd[wkey].shape[0]) for sd in state_dicts)
    specs = []
    for rank, sd in enumerate(state_dicts):
        start, n = shard_range(num_classes, world, rank)
        if sd[wkey].shape[0] != n:
            raise ValueError(
                f"gather_shards: shard {rank} has {sd[wkey].shape[0]} rows; contiguous sharding of {num_classes} "
                "classes "
                f"over {world} ranks gives {n}. Shards without {skey!r} must be given in rank order"
            )
        specs.append(dict(num_classes=num_classes, world_size=world, rank=rank, class_start=start, num_local=n))
    return specs


def gather_shards(state_dicts: Sequence[StateDict], prefix: str = "") -> torch.Tensor:
    """Full class-center matrix [num_classes, E] from the shards' state_dicts (any order).

    Shards saved by facezoo carry their class range; insightface shards (``weight`` only) must be in rank
    order. ``prefix`` selects the module inside a larger state_dict (e.g. ``"partial_fc."``). Gaps, overlaps
    or inconsistent shapes raise an error naming the shard.
    """
    specs = _shard_specs(state_dicts, prefix)
    wkey = prefix + "weight"
    num_classes = {s["num_classes"] for s in specs}
    dims = {int(sd[wkey].shape[1]) for sd in state_dicts}
    if len(num_classes) != 1 or len(dims) != 1:
        raise ValueError(
            f"gather_shards: shards disagree on num_classes {sorted(num_classes)} or embedding size {sorted(dims)}"
        )
    order = sorted(range(len(specs)), key=lambda i: specs[i]["class_start"])
    expected = 0
    for i in order:
        if specs[i]["class_start"] != expected:
            raise ValueError(
                f"gather_shards: classes [{expected}, {specs[i]['class_start']}) are missing or shard {i} overlaps "
                f"(it starts at {specs[i]['class_start']}); pass every rank's shard once"
            )
        expected += specs[i]["num_local"]
    if expected != num_classes.pop():
        raise ValueError(f"gather_shards: shards cover {expected} classes of {specs[0]['num_classes']}")
    return torch.cat([state_dicts[i][wkey].detach() for i in order])


def reshard(state_dicts: Sequence[StateDict], world_size: int, prefix: str = "") -> list[dict[str, torch.Tensor]]:
    """Cut saved shards anew for ``world_size`` ranks; returns one state_dict per new rank, in rank order.

    Keys other than the weight and ``shard_spec`` (e.g. AdaFace's norm statistics, identical on every rank)
    are copied from the shard holding class 0. Optimizer state (momentum) is not part of a state_dict here:
    cut momentum buffers the same way by passing ``{"weight": buf, "shard_spec": spec}`` dicts.
    """
    specs = _shard_specs(state_dicts, prefix)
    full = gather_shards(state_dicts, prefix)
    num_classes = full.shape[0]
    first = min(range(len(specs)), key=lambda i: specs[i]["class_start"])
    wkey, skey = prefix + "weight", prefix + SPEC_KEY
    shared = {k: v for k, v in state_dicts[first].items() if k not in (wkey, skey)}
    out = []
    for rank in range(int(world_size)):
        start, n = shard_range(num_classes, int(world_size), rank)
        sd = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in shared.items()}
        sd[wkey] = full[start : start + n].clone()
        sd[skey] = torch.tensor([num_classes, int(world_size), rank, start, n], dtype=torch.long)
        out.append(sd)
    return out


PathLike = Union[str, os.PathLike]


def load_shard_file(path: PathLike, key: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Read one shard: ``.safetensors``, or a torch file loaded with ``weights_only=True`` (never unrestricted).

    ``key`` picks a nested state_dict inside a training checkpoint, e.g. insightface's
    ``"state_dict_softmax_fc"`` in ``checkpoint_gpu_{rank}.pt``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        if not isinstance(sd, Mapping) or key not in sd:
            keys = sorted(sd)[:10] if isinstance(sd, Mapping) else type(sd).__name__
            raise KeyError(f"{path}: no key {key!r} (found {keys})")
        sd = sd[key]
    if not isinstance(sd, Mapping) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path}: expected a state_dict of tensors (pass key= for a nested one)")
    return dict(sd)


def reshard_files(
    paths: Sequence[PathLike], world_size: int, out_dir: PathLike, key: Optional[str] = None, prefix: str = ""
) -> list[Path]:
    """Re-shard shard files for ``world_size`` ranks into ``out_dir/partial_fc_rank{r}_of_{W}.safetensors``.

    ``paths`` are facezoo shards in any order or insightface shards in rank order (see ``load_shard_file``).
    """
    from safetensors.torch import save_file

    shards = reshard([load_shard_file(p, key) for p in paths], world_size, prefix)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, sd in enumerate(shards):
        target = out_dir / f"partial_fc_rank{rank}_of_{world_size}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(target))
        written.append(target)
    return written


def read_shard_range(
    paths: Sequence[PathLike], class_start: int, num_local: int, keys: Sequence[str] = ("weight",)
) -> dict[str, torch.Tensor]:
    """Rows ``[class_start, class_start + num_local)`` of the row-sharded tensors ``keys`` from facezoo shard files.

    The files are ``.safetensors`` shards carrying ``shard_spec`` (any world size, any order); each is opened lazily
    and only the overlapping rows are read, so a rank re-sharding a 2M-class checkpoint never holds the full matrix.
    Every key must be row-aligned with the weight (``[num_local_saved, ...]``: the weight itself, or its optimizer
    buffers such as SGD's ``momentum_buffer``). Missing rows raise an error naming them.
    """
    from safetensors import safe_open

    stop = class_start + num_local
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {k: [] for k in keys}
    covered = 0
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            if SPEC_KEY not in f.keys():
                raise ValueError(f"{path}: no {SPEC_KEY!r}; not a facezoo Partial FC shard")
            spec = dict(zip(SPEC_FIELDS, [int(v) for v in f.get_tensor(SPEC_KEY).tolist()]))
            lo, hi = max(class_start, spec["class_start"]), min(stop, spec["class_start"] + spec["num_local"])
            if lo >= hi:
                continue
            covered += hi - lo
            a, b = lo - spec["class_start"], hi - spec["class_start"]
            for k in keys:
                if k not in f.keys():
                    raise KeyError(f"{path}: no {k!r} in this shard (keys: {sorted(f.keys())[:8]})")
                parts[k].append((lo, f.get_slice(k)[a:b]))
    if covered != num_local:
        raise ValueError(
            f"Partial FC shards {[str(p) for p in paths]} cover {covered} of the {num_local} classes "
            f"[{class_start}, {stop}); pass every rank's shard once"
        )
    return {k: torch.cat([t for _, t in sorted(v, key=lambda item: item[0])]) for k, v in parts.items()}
