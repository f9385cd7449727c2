"""Mixed precision: autocast and a dynamic loss scale whose skip decision is the same on every rank.

PyTorch's ``GradScaler`` decides per rank whether a step overflowed. With Partial FC the class centres'
gradients are rank-local, so ranks can disagree: one skips, the others step, and the replicas diverge (FSDP's
``ShardedGradScaler`` all-reduces the flag for the same reason). Here the trainer finds non-finite values over all
gradients, all-reduces that flag with the rest of its per-step agreement, then calls :meth:`LossScaler.update`
with the common answer. The same check guards bf16 and fp32 steps, without scaling.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Iterable, Optional

import torch

__all__ = ["LossScaler", "autocast", "unscale_and_check"]


class LossScaler:
    """A dynamic loss scale (insightface's fp16 settings: start 2**16, x2 every 100 good steps, /2 on overflow)."""

    def __init__(
        self,
        enabled: bool,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 100,
    ) -> None:
        self.enabled = enabled
        self.scale = float(init_scale) if enabled else 1.0
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def update(self, found_inf: bool) -> None:
        if not self.enabled:
            return
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"scale": self.scale, "good_steps": self.good_steps, "enabled": self.enabled}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.enabled and state.get("enabled"):
            self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


def autocast(device: torch.device, mixed_precision: str) -> ContextManager:
    """``torch.autocast`` for ``'fp16'`` / ``'bf16'``, a no-op for ``'no'``."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def unscale_and_check(
    params: Iterable[torch.nn.Parameter], scale: float, device: torch.device, loss: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Divide every gradient by ``scale`` in place and return a 0/1 float tensor: 1 when any gradient (or the loss)
    is not finite. One fused pass per device and dtype (``torch._amp_foreach_non_finite_check_and_unscale_``)."""
    found = torch.zeros(1, device=device)
    groups: Dict[tuple, list] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for (dev, _), grads in groups.items():
        flag = torch.zeros(1, device=dev)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, torch.full((1,), 1.0 / scale, device=dev))
        found = torch.maximum(found, flag.to(device))
    if loss is not None:
        found = torch.maximum(found, (~torch.isfinite(loss.detach().float())).any().float().reshape(1).to(device))
    return found
