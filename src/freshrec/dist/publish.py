"""Publishing a sharded model: every shard exports its delta, one rank publishes the version.

A registry subscriber (serving) must see one model, whatever the number of ranks that
trained it. :class:`ShardedPublisher` is called by every rank at the same step: each rank
cuts its own delta (:meth:`~freshrec.table.EmbeddingTable.export_delta`: the rows it wrote and
the fids it expired since its last publish) and sends it to rank 0 (a gather, which is also
the barrier: rank 0 publishes only once every shard's delta is in). Rank 0 applies the
shards' deltas to its publishing copy of the tables and publishes through the unchanged
:class:`~freshrec.sync.Publisher`, so the registry format, its delta chain and full snapshots
stay as they are. The copy holds the whole model on rank 0 (publishing only; training reads
and writes the shards).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from freshrec.dist.exchange import SparseExchange
from freshrec.sync.config import PublisherConfig
from freshrec.sync.publisher import Publisher
from freshrec.sync.registry import Registry, VersionManifest
from freshrec.table.delta import TableDelta
from freshrec.table.table import EmbeddingTable

__all__ = ["ShardedPublisher"]


class ShardedPublisher:
    """Publishes the model whose tables are sharded over the ranks of ``exchange``.

    Parameters
    ----------
    registry : Registry
        Written by rank 0 only.
    tables : mapping of name to EmbeddingTable
        This rank's shards (their expired-fid logs must be kept:
        ``Trainer.keep_expired_log = True``).
    dense_state_fn : callable
        The dense state dict (rank 0's; every rank holds the same).
    exchange : SparseExchange
    config : PublisherConfig, optional
    """

    def __init__(self, registry: Registry, tables: Mapping[str, EmbeddingTable],
                 dense_state_fn: Callable[[], Mapping[str, torch.Tensor]],
                 exchange: SparseExchange, config: PublisherConfig | None = None) -> None:
        self.tables = dict(tables)
        self.exchange = exchange
        self.registry = registry
        self._cut = {name: 0 for name in self.tables}
        self.mirror = {name: EmbeddingTable(t.config) for name, t in self.tables.items()} \
            if exchange.rank == 0 else {}
        self.publisher = Publisher(registry, self.mirror, dense_state_fn, config) \
            if exchange.rank == 0 else None
        c = config if config is not None else PublisherConfig()
        self._every_s = min(c.sparse_interval_s, c.dense_interval_s, c.full_interval_s)
        self._gathered_at: float | None = None

    def _gather_deltas(self) -> None:
        """Every shard's delta since the last publish, applied to rank 0's copy."""
        ex = self.exchange
        for name, table in self.tables.items():
            d = table.export_delta(self._cut[name], with_state=False)
            self._cut[name] = d.to_version
            table.forget_expired_before(d.to_version)
            fids = ex.gather(d.fids.view(np.int64)).view(np.uint64)
            values = ex.gather(d.values)
            seen = ex.gather(d.last_seen.view(np.int32)).view(np.uint32)
            expired = ex.gather(d.expired.view(np.int64)).view(np.uint64)
            if ex.rank == 0:
                self.mirror[name].apply_delta(TableDelta(
                    table=name, fingerprint=d.fingerprint, from_version=0, to_version=0,
                    fids=fids, values=values, last_seen=seen, states=None, expired=expired),
                    check_version=False)

    def due(self, now: float) -> bool:
        """Whether :meth:`maybe_publish` has anything to do at rank 0's clock ``now`` (the
        first call, then every shortest interval of the ``sync`` section); a collective:
        rank 0 decides for all."""
        mine = self._gathered_at is None or now - self._gathered_at >= self._every_s
        return self.exchange.any(mine and self.exchange.rank == 0)

    def maybe_publish(self, now: float, **kwargs: Any) -> VersionManifest | None:
        """Gather every shard's changes; rank 0 publishes what its
        :meth:`~freshrec.sync.Publisher.maybe_publish` finds due at ``now`` (a full
        snapshot, a delta with or without the dense part, or nothing yet: the rows gathered
        stay in its copy for the next version). A collective: call it on every rank when
        :meth:`due` says so."""
        self._gathered_at = now
        self._gather_deltas()
        return self._on_rank0(lambda p: p.maybe_publish(now, **kwargs))

    def publish_full(self, **kwargs: Any) -> VersionManifest | None:
        """Gather every shard's changes, then rank 0 publishes a full snapshot (a collective;
        rank 0 returns the manifest, the others None)."""
        self._gather_deltas()
        return self._on_rank0(lambda p: p.publish_full(**kwargs))

    def publish_sparse(self, **kwargs: Any) -> VersionManifest | None:
        """Gather every shard's changes, then rank 0 publishes them as one delta."""
        self._gather_deltas()
        return self._on_rank0(lambda p: p.publish_sparse(**kwargs))

    def publish_dense(self, **kwargs: Any) -> VersionManifest | None:
        """Rank 0 publishes the dense parameters (with the rows gathered so far)."""
        self._gather_deltas()
        return self._on_rank0(lambda p: p.publish_dense(**kwargs))

    def _on_rank0(self, publish: Callable[[Publisher], VersionManifest | None]
                  ) -> VersionManifest | None:
        """Rank 0 publishes; when it cannot write (:class:`OSError`, e.g. a full disk) every
        rank raises, so that all of them take the same way out (a retry) in step."""
        error: OSError | None = None
        manifest = None
        if self.publisher is not None:
            try:
                manifest = publish(self.publisher)
            except OSError as e:
                error = e
        if self.exchange.any(error is not None):
            raise OSError(f"rank {self.exchange.rank}: publish to {self.registry.root} failed: "
                          f"{error if error is not None else 'rank 0 could not write'}"
                          ) from error
        return manifest
