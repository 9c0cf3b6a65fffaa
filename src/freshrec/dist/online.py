"""Distributed online training: each rank trains on its own partitions of the examples log.

Rank ``r`` of ``N`` owns the log's partitions ``p`` with ``p mod N == r`` (round-robin; the
log keeps each partition's order) and reads only those. A *round* is one read: every rank
reads what its partitions hold (up to ``online.max_records`` each), cuts it into local
batches of ``train.batch_size // N`` examples, and the ranks agree with one small gather on
the round's step count (the most local batches of any rank), its example count and its
newest event time. A rank with fewer batches, or none, steps with empty batches, so no
collective waits for a rank that has nothing to train on: global step ``k`` of a round
trains the concatenation, in rank order, of every rank's ``k``-th local batch, exactly as
one process would train that batch (:class:`~freshrec.dist.DistTrainer`).

Decisions taken by clocks (checkpoint due, publish due, idle) are rank 0's, or any rank's
for stopping, and every rank follows them. A checkpoint is the distributed checkpoint of
:mod:`freshrec.dist.checkpoint` (each rank's shard under one atomic manifest) and every
shard keeps the offsets of *all* partitions, so a restart (``torchrun --max-restarts``, or
another world size) resumes each partition where the last manifest left it: no example is
lost or trained twice. Updates are published through :class:`~freshrec.dist.ShardedPublisher`:
one version per publishing round, each rank writing its shard's part, rank 0 the manifest
once every part is in.

The publish gate (``ops.gate``) decides on the held-back examples of every rank
(:class:`~freshrec.dist.gate.ShardedPublishGate`): each rank holds back its share of what
it reads, scores it at a check, and every rank judges the union, so all take the decision
one process would take on those examples; a refusal is recorded once (by rank 0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from freshrec.dist.gate import ShardedPublishGate
from freshrec.dist.publish import ShardedPublisher
from freshrec.dist.trainer import DistTrainer
from freshrec.features.schema import EncodedBatch
from freshrec.stream.base import Log
from freshrec.sync.registry import Registry
from freshrec.train.online import OnlineTrainer
from freshrec.train.trainer import Trainer

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["DistOnlineTrainer", "owned_partitions"]

log = logging.getLogger(__name__)


def owned_partitions(partitions: int, rank: int, world: int) -> list[int]:
    """The partitions of a log that ``rank`` of ``world`` reads: round-robin by id.

    >>> [owned_partitions(5, r, 2) for r in range(2)]
    [[0, 2, 4], [1, 3]]
    >>> owned_partitions(1, 1, 2)
    []
    """
    return list(range(rank, partitions, world))


class DistOnlineTrainer(OnlineTrainer):
    """The :class:`~freshrec.train.online.OnlineTrainer` of one rank; see the module
    docstring. Every rank of the process group builds one on the same log and calls
    :meth:`run` (or :meth:`step`): they are collectives.

    Parameters
    ----------
    config : FreshrecConfig
        ``train.batch_size`` is the global batch: each rank's local batches hold
        ``batch_size // world`` examples (at least one).
    source : Log
        The examples log; this rank reads :func:`owned_partitions` of it.
    run_dir : path
        The run directory shared by the ranks (:mod:`freshrec.dist.checkpoint`).
    registry : Registry, optional
        Where rank 0 publishes (:class:`~freshrec.dist.ShardedPublisher`).
    """

    def __init__(self, config: FreshrecConfig, source: Log, *, run_dir: str | Path,
                 registry: Registry | None = None) -> None:
        super().__init__(config, source, run_dir=run_dir, registry=registry)
        if self.gate is not None:
            self.gate = ShardedPublishGate(config.ops.gate, self.exchange,
                                           self.dist.empty_batch)

    # ------------------------------------------------------------------ hooks of the base
    def _new_trainer(self, config: FreshrecConfig, run_dir: str | Path) -> Trainer:
        #: The rank's trainer (:attr:`trainer`, typed).
        self.dist = DistTrainer(config, run_dir)
        self.exchange, self.rank, self.world = self.dist.exchange, self.dist.rank, self.dist.world
        return self.dist

    def _new_publisher(self, registry: Registry) -> ShardedPublisher:
        return ShardedPublisher(registry, self.trainer.tables, self._dense_state, self.exchange,
                                self.config.sync)

    def _agreed(self, flag: bool) -> bool:
        return self.exchange.any(flag)

    def _resume(self) -> None:
        """Resume from the newest manifest: every shard holds every partition's offset and
        the run's rejected count (kept by rank 0); this rank keeps its partitions'."""
        super()._resume()
        self.offsets = {p: self.offsets.get(p, 0) for p in
                        owned_partitions(self.source.partitions, self.rank, self.world)}
        if self.rank:
            self.rejected = 0

    def _train(self, rb: pa.RecordBatch | None) -> int:
        """Train this rank's examples ``rb`` (None: it read none) in step with the other
        ranks; returns the examples all ranks trained in this round."""
        local = self.config.train.batch_size // self.world or 1
        n = self._learn(self._encoded(rb, local) if rb is not None else [])
        self._after_round()
        return n

    def _learn(self, batches: list[EncodedBatch]) -> int:
        newest = max((int(b.event_time.max()) for b in batches if b.size), default=-1)
        got = self.exchange.gather(np.array(
            [[len(batches), sum(b.size for b in batches), newest]], np.float64))
        steps = int(got[:, 0].max())
        for k in range(steps):
            self._learn_one(batches[k] if k < len(batches) else self.dist.empty_batch())
        if got[:, 2].max() >= 0:
            self.newest_event_time = max(int(got[:, 2].max()), self.newest_event_time or 0)
        return int(got[:, 1].sum())

    def _maybe_checkpoint(self) -> None:
        due = time.monotonic() - self._last_ckpt >= self.config.online.checkpoint_every_s
        if self.exchange.any(due and self.rank == 0):
            self.checkpoint()

    def _checkpoint_state(self) -> dict[str, Any]:
        return {**super()._checkpoint_state(),
                "offsets": {str(p): o for p, o in self.all_offsets().items()},
                "rejected": int(self.exchange.sum(float(self.rejected)))}

    def _maybe_publish(self) -> None:
        now = time.monotonic()
        # the gate is a collective: checked whenever rank 0's clock says a publish is due
        if self.publisher is None or not self.publisher.due(now) \
                or not self._gate_allows(final=True):
            return
        self._published(self.publisher.maybe_publish(
            now, event_time=self.newest_event_time, meta=self._publish_meta()))

    def _publish_meta(self) -> dict[str, Any]:
        return {**super()._publish_meta(), "offsets": self.all_offsets(),
                "examples": self.all_examples(), "ranks": self.world}

    # ------------------------------------------------------------------ the run's totals
    def all_offsets(self) -> dict[int, int]:
        """Every partition's offset (every rank's :attr:`offsets`); a collective."""
        mine = np.array(sorted(self.offsets.items()), np.int64).reshape(-1, 2)
        return {int(p): int(o) for p, o in sorted(self.exchange.gather(mine).tolist())}

    def all_examples(self) -> int:
        """Examples trained by all ranks since the start of the run; a collective."""
        return int(self.exchange.sum(float(self.trainer.examples)))

    def run(self, *, idle_timeout_s: float = 5.0, max_examples: int | None = None,
            stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """:meth:`OnlineTrainer.run` on every rank; the summary is the run's (examples,
        offsets and rejected records of all ranks, ``ranks``), the same on every rank."""
        summary = super().run(idle_timeout_s=idle_timeout_s, max_examples=max_examples,
                              stop=stop)
        return {**summary, "ranks": self.world, "examples": self.all_examples(),
                "offsets": self.all_offsets(),
                "rejected": int(self.exchange.sum(float(self.rejected)))}
