"""The publish gate of a distributed online run: one decision on the held-back examples of
every rank.

Each rank holds back its share of the examples it reads (:class:`~freshrec.ops.PublishGate`'s
rule, applied to its own stream). At a check every rank scores its held-back batches with
the candidate model (a collective: a rank with fewer batches scores empty ones, as in
training), the labels and scores of all ranks are gathered, and every rank judges the union
(:meth:`~freshrec.ops.PublishGate.judge`): the same decision on every rank, the decision one
process would take on those examples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from freshrec.dist.exchange import SparseExchange
from freshrec.ops.config import GateConfig
from freshrec.ops.gate import GateDecision, PublishGate

__all__ = ["ShardedPublishGate"]


class ShardedPublishGate(PublishGate):
    """:class:`~freshrec.ops.PublishGate` over the held-back examples of every rank;
    :meth:`check` is a collective (call it on every rank at the same step).

    Parameters
    ----------
    config : GateConfig
        ``min_examples`` counts the examples of all ranks; ``holdout_examples`` is kept by
        each rank.
    exchange : SparseExchange
    empty : callable
        A batch of no examples, scored by a rank that has no batch left while others do.
    """

    def __init__(self, config: GateConfig, exchange: SparseExchange,
                 empty: Callable[[], Any]) -> None:
        super().__init__(config)
        self.exchange = exchange
        self.empty = empty

    def check(self, predict: Callable[[Any], np.ndarray], *,
              reference_auc: float | None) -> GateDecision:
        """Score every rank's held-back batches in step, gather them, judge the union."""
        ex = self.exchange
        held = self.held()
        total = int(ex.sum(float(self.examples)))
        if total < self.config.min_examples:
            return self.judge(np.empty(0), np.empty(0), reference_auc=reference_auc,
                              examples=total)
        steps = int(ex.max(float(len(held))))
        cols = []
        for k in range(steps):
            if k < len(held):
                batch, labels = held[k]
                scores = np.asarray(predict(batch), dtype=np.float64).reshape(-1)
                cols.append(np.stack([labels, scores], axis=1))
            else:
                predict(self.empty())
        every = ex.gather(np.concatenate(cols) if cols else np.empty((0, 2), np.float64))
        return self.judge(every[:, 0], every[:, 1], reference_auc=reference_auc)
