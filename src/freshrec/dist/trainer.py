"""The distributed trainer: :class:`~freshrec.train.Trainer` on sharded tables and
data-parallel dense parameters.

Each rank runs a :class:`DistTrainer` on its slice of every global batch of
``train.batch_size`` rows (rows ``[n*r/N, n*(r+1)/N)`` of the batch after negative sampling,
which every rank draws with the same coins). The step is the single-process step: the
embedding is a :class:`~freshrec.dist.ShardedPooledEmbedding`, dense gradients are summed
over ranks (:class:`~freshrec.dist.DenseGradientSync`), and the loss is divided by the
weight of the whole global batch with the event time of its newest example, so N ranks train
the model one process would on the same batches. Progressive metrics are updated with
every rank's predictions, so each rank reports the metrics of the whole stream.

Checkpoints are per-rank shards under one manifest (:mod:`freshrec.dist.checkpoint`); a
run restores from a checkpoint written by any number of ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike

from freshrec.dist.checkpoint import latest_manifest, reshard_table, write_manifest
from freshrec.dist.dense import DenseGradientSync
from freshrec.dist.embedding import ShardedPooledEmbedding
from freshrec.dist.exchange import SparseExchange
from freshrec.errors import ConfigError, InputError
from freshrec.features.schema import EncodedBatch
from freshrec.train.metrics import Metric, MetricSet
from freshrec.train.trainer import Trainer

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["DistTrainer", "GlobalMetricSet"]

log = logging.getLogger(__name__)


class GlobalMetricSet(MetricSet):
    """A :class:`~freshrec.train.metrics.MetricSet` updated with every rank's examples (in
    rank order): each rank holds the metrics of the whole global stream."""

    def __init__(self, metrics: dict[str, Metric], exchange: SparseExchange) -> None:
        super().__init__(metrics)
        self.exchange = exchange

    def update(self, y_true: ArrayLike, y_pred: ArrayLike, weight: ArrayLike | None = None, *,
               now: float | None = None) -> None:
        y = np.asarray(y_true, np.float64)
        w = np.ones_like(y) if weight is None else np.asarray(weight, np.float64)
        cols = self.exchange.gather(np.stack([y, np.asarray(y_pred, np.float64), w], axis=1))
        super().update(cols[:, 0], cols[:, 1], cols[:, 2], now=now)


class DistTrainer(Trainer):
    """A :class:`~freshrec.train.Trainer` for one rank of a distributed run.

    Every rank of the process group builds one with the same config and calls the same
    methods (:meth:`fit`, :meth:`learn_batch`, :meth:`save`, :meth:`resume`) in the same
    order: they are collectives.

    Parameters
    ----------
    config : FreshrecConfig
        ``train.batch_size`` is the global batch (all ranks together).
    run_dir : path, optional
        The run directory shared by all ranks (see :mod:`freshrec.dist.checkpoint`).
    group : ProcessGroup, optional
        The gloo group of the sparse exchange (the default group when None).
    dense_group : ProcessGroup, optional
        The group of the dense all-reduce (a new group of the same ranks when None, so it
        runs beside the sparse exchange).
    """

    def __init__(self, config: FreshrecConfig, run_dir: str | Path | None = None, *,
                 group: Any = None, dense_group: Any = None) -> None:
        import torch.distributed as dist

        exchange = SparseExchange(group)
        tc = config.train
        #: Whether this rank reads files of its own (``dist.slicing: files``): its batches are
        #: local (``batch_size // world`` rows), not its slice of a global batch.
        self.own_files = config.dist.slicing == "files"
        # shards keep one checkpoint more than the manifests name (see dist.checkpoint);
        # progress lines are written by rank 0 only (every rank has the global metrics)
        config = replace(config, train=replace(
            tc, keep_checkpoints=tc.keep_checkpoints + 1,
            log_every_steps=tc.log_every_steps if exchange.rank == 0 else 0,
            batch_size=(tc.batch_size // exchange.world or 1) if self.own_files
            else tc.batch_size))
        self.run_root = Path(run_dir) if run_dir is not None else None
        super().__init__(config, None if self.run_root is None
                         else self.run_root / f"rank-{exchange.rank}")
        self.exchange = exchange
        self.rank, self.world = exchange.rank, exchange.world
        self._empty: EncodedBatch | None = None
        self._keep_manifests = tc.keep_checkpoints
        #: Named in the error when this rank's input cannot be read (the CLI sets the path).
        self.input_name = "<input>"
        self.embedding = ShardedPooledEmbedding(self.tables, self.embedding.slots, exchange)
        self.model.embedding = self.embedding
        # online feature importance reads one process's concat; not sampled across ranks
        self.importance = None
        self.metrics = GlobalMetricSet(self.metrics.metrics, exchange)
        if dense_group is None and self.world > 1:
            dense_group = dist.new_group(backend=dist.get_backend(group))
        self.dense_sync = DenseGradientSync(self.model.parameters(), self.optimizer,
                                            dense_group if self.world > 1 else None)
        if self.world > 1:
            self.dense_sync.broadcast()

    # ------------------------------------------------------------------ the step over ranks
    def _step_now(self, enc: EncodedBatch) -> int:
        return int(self.exchange.max(float(super()._step_now(enc))))

    def _loss_weight(self, weight: np.ndarray) -> float:
        return self.exchange.sum(float(weight.sum()))

    def _encode(self, sampled: pa.RecordBatch) -> EncodedBatch | None:
        """This rank's slice (rows ``[n r / N, n (r + 1) / N)``) of the global batch after
        negative sampling, which every rank draws with the same coins, encoded; an empty
        slice is still a step (the step is a collective); None when sampling left the whole
        global batch empty (every rank skips it). A rank reading its own files encodes its
        whole local batch."""
        n = sampled.num_rows
        if not n:
            return None
        lo, hi = (0, n) if self.own_files else \
            (n * self.rank // self.world, n * (self.rank + 1) // self.world)
        try:
            return self.schema.encode(sampled.slice(lo, hi - lo))
        except InputError as e:
            raise InputError(f"rank {self.rank}: input {self.input_name!r}: {e}") from e

    def _in_step(self, prepared: Iterator[tuple[int, EncodedBatch | None]]
                 ) -> Iterator[tuple[int, EncodedBatch | None]]:
        """Ranks reading their own files step together: before each step they agree whether
        any rank still has a batch; a rank whose files are done (or whose batch sampling
        emptied) steps with an empty batch, and the epoch ends when no rank has one."""
        if not self.own_files or self.world == 1:
            yield from prepared
            return
        i = self.position["batches"]
        while True:
            item = next(prepared, None)
            if not self.exchange.any(item is not None):
                return
            enc = item[1] if item is not None else None
            yield i, enc if enc is not None else self.empty_batch()
            i += 1

    def empty_batch(self) -> EncodedBatch:
        """A batch of no examples: this rank's share of a step it has nothing for."""
        if self._empty is None:
            labels = {name: pa.array([], pa.float32()) for name in self.config.features.labels}
            self._empty = self.schema.encode(pa.RecordBatch.from_pydict(labels))
        return self._empty

    def _checkpoint_due(self, step: int) -> bool:
        due = super()._checkpoint_due(step)
        if self.config.train.checkpoint_every_s:  # wall clocks differ: rank 0's decides
            due = self.exchange.max(float(due and self.rank == 0)) > 0
        return due

    # ------------------------------------------------------------------ checkpoints
    def save(self, extra: dict[str, Any] | None = None) -> Path:
        """Write this rank's shard checkpoint; after every rank has, rank 0 writes the
        manifest naming them all. Returns the manifest's path. When a rank cannot write its
        shard, every rank raises :class:`OSError` and the manifest stays the previous one."""
        if self.run_root is None:
            raise ConfigError("DistTrainer.save: run_dir is None; build the trainer with "
                              "DistTrainer(config, run_dir=...) to write checkpoints")
        total = int(self.exchange.sum(float(self.examples)))
        failed: OSError | None = None
        try:
            shard = super().save({**(extra or {}), "examples_all_ranks": total})
        except OSError as e:
            failed = e
        self._raise_on_any(failed, "checkpoint shard")
        name = shard.name
        path = self.run_root / "checkpoints" / f"{name}.json"
        if self.rank == 0:
            shards = [self.run_root / f"rank-{r}" / "checkpoints" / name
                      for r in range(self.world)]
            try:
                path = write_manifest(self.run_root, name, self.step, shards,
                                      self._keep_manifests)
            except OSError as e:
                failed = e
        self._raise_on_any(failed, "checkpoint manifest")
        return path

    def _raise_on_any(self, error: OSError | None, what: str) -> None:
        """Raise :class:`OSError` on every rank when ``error`` happened on any (a
        collective), so that every rank takes the same way out: a retry of the whole
        checkpoint."""
        if self.exchange.any(error is not None):
            raise OSError(f"rank {self.rank}: {what} not written: "
                          f"{error if error is not None else 'another rank failed'}"
                          ) from error

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore the newest manifest of ``run_dir/checkpoints`` (or the manifest or
        checkpoints folder ``path``); False when there is none. A checkpoint of another
        world size is re-sharded: each rank keeps the rows it owns from every old shard."""
        root = Path(path) if path is not None else (
            self.run_root / "checkpoints" if self.run_root is not None else None)
        manifest = latest_manifest(root) if root is not None else None
        if manifest is None:
            return False
        if manifest.world_size == self.world:
            done = super().resume(manifest.shards[self.rank])
        else:
            # dense part, position and metrics are the same on every shard: take rank 0's
            done = super().resume(manifest.shards[0])
            # rank 0 carries the examples of every old rank (the others start from none)
            self.examples = int(self.resumed_state.get("examples_all_ranks", self.examples)) \
                if self.rank == 0 else 0
            for name, table in list(self.tables.items()):
                new = reshard_table(table.config, [s / "tables" / name for s in manifest.shards],
                                    self.rank, self.world)
                self.tables[name] = self.embedding.tables[name] = new
            log.info("resharded checkpoint=%s from %d to %d ranks", manifest.path,
                     manifest.world_size, self.world)
            if self.own_files and self.position["batches"]:
                raise ConfigError(
                    f"{manifest.path}: written by {manifest.world_size} ranks in the middle "
                    f"of an epoch; with dist.slicing=files the ranks' files change with the "
                    f"world size: resume on {manifest.world_size} ranks (or from a "
                    f"checkpoint at an epoch's end)")
        self.exchange.barrier()
        return done
