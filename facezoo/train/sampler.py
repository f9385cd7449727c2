"""The order of training samples: a pure function of (seed, epoch, position), the same on every rank.

Each epoch is a permutation of the dataset drawn from ``(seed, epoch)``. An optimizer step takes the next
``global_batch`` samples of it; with ``grad_accum`` micro-batches each takes ``global_batch / grad_accum`` of them,
and each of the ``world`` processes a contiguous ``1 / world`` of that. The last ``len % global_batch`` samples of
an epoch's permutation are left out (insightface drops the last partial batch too), a different few each epoch.

A position is ``(epoch, offset)``: the number of samples of the epoch's permutation already consumed. Because it
counts samples, not steps or ranks, a run resumed on another number of processes (the global batch unchanged)
continues the interrupted epoch at the same sample, and every sample of the epoch is used exactly once. facezoo
owns this sampler instead of Accelerate's ``skip_first_batches`` (see the Accelerate resume issues about duplicated
indices under DDP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
from torch.utils.data import Sampler

from facezoo.errors import ConfigError

__all__ = ["BatchPlan", "MicroBatch", "RankBatchSampler", "epoch_permutation"]

_SEED_STRIDE = 1_000_003


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch`` (int64), from a generator seeded with ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed(int(seed) * _SEED_STRIDE + int(epoch))
    return torch.randperm(int(num_samples), generator=g)


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of this rank: where it is in the run and which dataset items it holds."""

    step: int  # 0-based optimizer step of the run
    epoch: int
    offset: int  # samples of the epoch consumed before this step
    micro: int  # micro-batch index within the step
    indices: List[int]  # this rank's dataset indices


class BatchPlan:
    """Which items every rank reads at every micro-batch (see the module docstring)."""

    @staticmethod
    def check_split(global_batch: int, grad_accum: int, world_size: int) -> None:
        parts = grad_accum * world_size
        if global_batch % parts:
            raise ConfigError(
                f"data.batch_size {global_batch} cannot be split evenly over {world_size} process(es) x "
                f"{grad_accum} micro-batch(es) (train.grad_accum); use a multiple of {parts}"
            )

    @staticmethod
    def check_fill(num_samples: int, global_batch: int) -> None:
        if num_samples < global_batch:
            raise ConfigError(
                f"data.batch_size {global_batch} is larger than the training set ({num_samples} images): "
                "one step could not be filled"
            )

    def __init__(
        self, num_samples: int, global_batch: int, grad_accum: int, world_size: int, rank: int, seed: int
    ) -> None:
        self.check_split(global_batch, grad_accum, world_size)
        self.check_fill(num_samples, global_batch)
        self.num_samples, self.global_batch, self.grad_accum = int(num_samples), int(global_batch), int(grad_accum)
        self.world_size, self.rank, self.seed = int(world_size), int(rank), int(seed)
        self.micro_global = self.global_batch // self.grad_accum
        self.local_batch = self.micro_global // self.world_size
        self.steps_per_epoch = self.num_samples // self.global_batch
        self._perm: Optional[torch.Tensor] = None
        self._perm_epoch = -1

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            self._perm, self._perm_epoch = epoch_permutation(self.num_samples, self.seed, epoch), epoch
        return self._perm  # type: ignore[return-value]

    def micro_indices(self, epoch: int, offset: int, micro: int, rank: Optional[int] = None) -> List[int]:
        """Dataset indices of ``rank`` (default: this one) for micro-batch ``micro`` of the step at ``offset``."""
        r = self.rank if rank is None else rank
        start = offset + micro * self.micro_global + r * self.local_batch
        return self.permutation(epoch)[start : start + self.local_batch].tolist()

    def iterate(self, start_step: int, total_steps: int, epoch: int, offset: int) -> Iterator[MicroBatch]:
        """Micro-batches from the position ``(epoch, offset)`` (which is step ``start_step``) to ``total_steps``."""
        step = start_step
        while step < total_steps:
            if offset + self.global_batch > self.num_samples:  # the rest of the epoch cannot fill a step
                epoch, offset = epoch + 1, 0
                continue
            for micro in range(self.grad_accum):
                yield MicroBatch(step, epoch, offset, micro, self.micro_indices(epoch, offset, micro))
            step, offset = step + 1, offset + self.global_batch

    def position_after(self, epoch: int, offset: int) -> tuple:
        """The position after the step at ``(epoch, offset)``: the next epoch's start when this one is used up."""
        offset += self.global_batch
        if offset + self.global_batch > self.num_samples:
            return epoch + 1, 0
        return epoch, offset


class RankBatchSampler(Sampler[List[int]]):
    """The DataLoader's ``batch_sampler``: this rank's micro-batches of :meth:`BatchPlan.iterate`, in order (workers
    read them ahead; the training loop walks the same plan to know where each batch belongs)."""

    def __init__(self, plan: BatchPlan, start_step: int, total_steps: int, epoch: int, offset: int) -> None:
        self.plan, self.args = plan, (start_step, total_steps, epoch, offset)

    def __iter__(self) -> Iterator[List[int]]:
        for mb in self.plan.iterate(*self.args):
            yield mb.indices

    def __len__(self) -> int:
        start, total = self.args[0], self.args[1]
        return max(total - start, 0) * self.plan.grad_accum
