"""Data-parallel dense parameters: their gradients summed over ranks, overlapped with the
sparse exchange.

The gradients are all-reduced as one flat bucket (one collective per step, whatever the
number of parameters), launched asynchronously as soon as autograd has accumulated the last
of them (``register_post_accumulate_grad_hook``), on a process group of its own: the dense
layers' gradients are all ready before the backward reaches the embedding layer, so the
reduction runs while the backward goes on to the all-to-all of row gradients; the
optimizer's step waits for it. Gradients are summed, not averaged: the
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
        self._ready = 0
        self._pending: tuple[Any, torch.Tensor] | None = None
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
        self._ready += 1
        if self._ready == len(self.params):
            self._launch()

    def _launch(self) -> None:
        """All-reduce every gradient as one flat buffer (a parameter without one adds zeros)."""
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.params])
        self._pending = (dist.all_reduce(flat, group=self.group, async_op=True), flat)

    def _wait(self, *_: Any) -> None:
        if self.world == 1:
            return
        if self._pending is None:  # some parameter got no gradient this step
            self._launch()
        assert self._pending is not None
        work, flat = self._pending
        self._pending, self._ready = None, 0
        work.wait()
        start = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[start : start + n].view_as(p)
            start += n

    def broadcast(self) -> None:
        """Make every rank's parameters rank 0's (at the start, and after a restore)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in self.params:
                dist.broadcast(p.data, src=0, group=self.group)
