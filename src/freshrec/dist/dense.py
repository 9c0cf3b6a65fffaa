"""Data-parallel dense parameters: their gradients summed over ranks, overlapped with the
sparse exchange.

Each parameter's gradient is all-reduced asynchronously as soon as autograd has
accumulated it (``register_post_accumulate_grad_hook``), on a process group of its own, so
the reduction runs while the backward goes on to the embedding layer and its all-to-all of
row gradients; the optimizer's step waits for them. Gradients are summed, not averaged: the
trainer divides the loss by the weight of the whole global batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DenseGradientSync"]


class DenseGradientSync:
    """Sums the gradients of ``params`` over the ranks of ``group`` before each
    ``optimizer.step()``.

    Parameters
    ----------
    params : iterable of Parameter
        Every parameter must receive a gradient at every step (all of a CTR model's do).
    optimizer : torch.optim.Optimizer
        Waits for the reductions before it steps.
    group : ProcessGroup, optional
        The group to reduce over (the default group when None).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 group: Any = None) -> None:
        self.group = group
        self._pending: list[Any] = []
        self.params = [p for p in params if p.requires_grad]
        #: Bytes of gradients this rank all-reduces per step.
        self.bytes_per_step = sum(p.numel() * p.element_size() for p in self.params)
        self.world = dist.get_world_size(group) if dist.is_initialized() else 1
        if self.world == 1:
            return
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._reduce)
        optimizer.register_step_pre_hook(self._wait)

    def _reduce(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._pending.append(dist.all_reduce(p.grad, group=self.group, async_op=True))

    def _wait(self, *_: Any) -> None:
        pending, self._pending = self._pending, []
        for work in pending:
            work.wait()

    def broadcast(self) -> None:
        """Make every rank's parameters rank 0's (at the start, and after a restore)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in self.params:
                dist.broadcast(p.data, src=0, group=self.group)
