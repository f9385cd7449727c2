"""Collectives with autograd for sharded classification losses (Partial FC).

Every helper works without a process group (one process: they return their input) and under
``torch.distributed`` with gloo (CPU tensors) or NCCL (CUDA tensors). Local batch sizes may differ
between ranks: tensors are padded to the largest one for the collective and trimmed afterwards.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

ProcessGroup = Any  # torch.distributed.ProcessGroup (kept loose: not importable on every build)


def is_distributed(group: Optional[ProcessGroup] = None) -> bool:
    """True when a process group is initialized and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world_size(group: Optional[ProcessGroup] = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def gather_sizes(n: int, device: torch.device, group: Optional[ProcessGroup] = None) -> list[int]:
    """First-dimension size of every rank's tensor (one small all-gather)."""
    if not is_distributed(group):
        return [n]
    world = dist.get_world_size(group)
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    return [int(s.item()) for s in sizes]


def _gather_padded(tensor: torch.Tensor, sizes: list[int], group: Optional[ProcessGroup]) -> torch.Tensor:
    biggest = max(sizes)
    if tensor.shape[0] < biggest:
        pad = tensor.new_zeros((biggest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    parts = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums every rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int], group: Any, grad_scale: float) -> torch.Tensor:
        ctx.sizes, ctx.group, ctx.grad_scale = sizes, group, grad_scale
        ctx.rank = dist.get_rank(group)
        return _gather_padded(tensor, sizes, group)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        # every rank holds the gradient of its own loss terms for all rows: sum them, keep ours
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        mine = grad[start : start + ctx.sizes[ctx.rank]]
        if ctx.grad_scale != 1.0:
            mine = mine * ctx.grad_scale
        return mine, None, None, None


def all_gather_with_grad(
    tensor: torch.Tensor,
    group: Optional[ProcessGroup] = None,
    sizes: Optional[list[int]] = None,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (rank order) keeping autograd.

    The gradient that reaches each rank's input is the sum, over ranks, of the gradients of their losses
    with respect to that rank's rows, times ``grad_scale`` (set it to the world size to cancel the
    averaging that DDP/FSDP apply to the backbone's gradients, as insightface does).
    """
    if not is_distributed(group):
        return tensor
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device, group)
    return _AllGatherWithGrad.apply(tensor, sizes, group, float(grad_scale))


def all_gather_no_grad(
    tensor: torch.Tensor, group: Optional[ProcessGroup] = None, sizes: Optional[list[int]] = None
) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (rank order), without autograd."""
    if not is_distributed(group):
        return tensor
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device, group)
    with torch.no_grad():
        return _gather_padded(tensor.detach(), sizes, group)


def all_reduce_sum(tensor: torch.Tensor, group: Optional[ProcessGroup] = None) -> torch.Tensor:
    """In-place sum over ranks (no-op in one process); returns ``tensor``."""
    if is_distributed(group):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def reduce_mean_std(
    values: torch.Tensor, group: Optional[ProcessGroup] = None
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean and unbiased std of ``values`` pooled over all ranks (float64 sums, one all-reduce).

    std is NaN when fewer than two values exist in total; callers decide what to do then.
    """
    v = values.detach().reshape(-1).double()
    stats = torch.stack([v.new_tensor(float(v.numel())), v.sum(), (v * v).sum()])
    all_reduce_sum(stats, group)
    count = int(stats[0].item())
    if count == 0:
        nan = v.new_tensor(float("nan"))
        return 0, nan, nan
    mean = stats[1] / count
    if count < 2:
        return count, mean, v.new_tensor(float("nan"))
    var = ((stats[2] - count * mean * mean) / (count - 1)).clamp_min(0.0)
    return count, mean, var.sqrt()


class _DistCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy over classes sharded across ranks; mean over the (global) batch.

    ``logits`` [N, C_local] hold this rank's columns for all N rows of the global batch; ``labels`` [N]
    are column indices in this shard or -1 when the row's class lives on another rank. Max and
    sum-of-exponentials are all-reduced, so every rank returns the same loss. Per row the loss is
    ``logsumexp - target_logit`` (exact, no probability underflow clamp). The gradient is
    ``(softmax - one_hot) / N``; the backward reuses the saved softmax buffer in place.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, group: Any) -> torch.Tensor:
        n = logits.shape[0]
        with torch.no_grad():
            max_logit = logits.max(dim=1, keepdim=True)[0]
            if is_distributed(group):
                dist.all_reduce(max_logit, op=dist.ReduceOp.MAX, group=group)
            probs = logits - max_logit
            probs.exp_()
            sum_exp = probs.sum(dim=1, keepdim=True)
            all_reduce_sum(sum_exp, group)
            probs.div_(sum_exp)
            positive = torch.where(labels != -1)[0]
            target = torch.zeros(n, 1, dtype=logits.dtype, device=logits.device)
            target[positive] = logits[positive].gather(1, labels[positive].view(-1, 1))
            all_reduce_sum(target, group)
            loss = (sum_exp.log() + max_logit - target).mean()
        ctx.save_for_backward(probs, labels, positive)
        ctx.used = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.used:
            raise RuntimeError("distributed cross-entropy: backward through the same graph twice is not supported")
        ctx.used = True
        probs, labels, positive = ctx.saved_tensors
        n = probs.shape[0]
        grad = probs  # the buffer is ours: reuse it
        grad[positive, labels[positive]] -= 1.0
        grad.mul_(grad_loss / n)
        return grad, None, None


def dist_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, group: Optional[ProcessGroup] = None
) -> torch.Tensor:
    """Mean softmax cross-entropy of rows whose classes are sharded over ``group`` (see ``_DistCrossEntropy``)."""
    if logits.dim() != 2:
        raise ValueError(f"dist_cross_entropy: logits must be [N, C_local], got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("dist_cross_entropy: empty batch")
    if logits.shape[1] == 0:
        raise ValueError("dist_cross_entropy: this rank holds no class columns")
    return _DistCrossEntropy.apply(logits, labels.reshape(-1).long(), group)
