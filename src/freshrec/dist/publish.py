"""Publishing a sharded model: every shard writes its part, one rank publishes the version.

A registry subscriber (serving) must see one model, whatever the number of ranks that
trained it. :class:`ShardedPublisher` is called by every rank at the same step. Rank 0 takes
the registry's writer lock and decides what the version is (a full snapshot or a delta, as
:class:`~freshrec.sync.Publisher` does); then every rank writes its shard's part of it into
the version's temporary directory: ``delta/<table>/part-R/`` (the rows it wrote and the fids
it expired since its last publish) and, for a full snapshot, ``full/<table>/part-R/``. Once
every part is written (a gather of their checksums, which is also the barrier) rank 0 writes
the dense part and the version manifest naming every part, and moves ``HEAD``, atomically as
in one process. No rank holds more than its shard.

The table versions of a version published in parts are the largest of the shards' (each
rank's tables count their own versions): every part of a delta is written from the version
the last publish cut at to that one, so a subscriber checks continuity as for one table.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshrec.dist.exchange import SparseExchange
from freshrec.sync.config import PublisherConfig
from freshrec.sync.publisher import Publisher, _check_event_time, _check_meta
from freshrec.sync.registry import Registry, VersionKind, VersionManifest
from freshrec.table.table import EmbeddingTable

__all__ = ["ShardedPublisher", "gather_json"]


def gather_json(exchange: SparseExchange, value: Any) -> list[Any]:
    """Every rank's JSON-able ``value``, in rank order, on every rank (a collective).

    >>> gather_json(SparseExchange(), {"rows": 3})
    [{'rows': 3}]
    """
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    if exchange.world == 1:
        return [json.loads(data.tobytes())]
    sizes = exchange.gather(np.array([data.shape[0]], np.int64))
    flat = exchange.gather(data).tobytes()
    ends = np.cumsum(sizes)
    return [json.loads(flat[e - n:e]) for n, e in zip(sizes.tolist(), ends.tolist(),
                                                      strict=True)]


class _RankRegistry(Registry):
    """The registry as a rank other than 0 uses it: it writes its parts there and reads it,
    and leaves the events log to rank 0, so that an event of the run (a publish the gate
    refused) is recorded once."""

    def record(self, event: Mapping[str, Any]) -> None:
        """Nothing: rank 0 records the run's events."""


class ShardedPublisher(Publisher):
    """Publishes the model whose tables are sharded over the ranks of ``exchange``, each
    rank writing its own part (see the module docstring). Every method that publishes is a
    collective: call it on every rank at the same step.

    Parameters
    ----------
    registry : Registry
        The same directory on every rank (rank 0 takes its lock, writes the manifest and
        records the run's events).
    tables : mapping of name to EmbeddingTable
        This rank's shards (their expired-fid logs must be kept:
        ``Trainer.keep_expired_log = True``).
    dense_state_fn : callable
        The dense state dict (rank 0's is published; every rank holds the same).
    exchange : SparseExchange
    config : PublisherConfig, optional
    """

    def __init__(self, registry: Registry, tables: Mapping[str, EmbeddingTable],
                 dense_state_fn: Callable[[], Mapping[str, torch.Tensor]],
                 exchange: SparseExchange, config: PublisherConfig | None = None) -> None:
        if exchange.rank != 0:
            registry = _RankRegistry(registry.root)
        super().__init__(registry, tables, dense_state_fn, config)
        self.exchange = exchange
        #: Per table, the (largest) version of the last publish: where every part of the
        #: next delta starts.
        self._published_cut: dict[str, int] = {}

    @property
    def rank(self) -> int:
        """This rank."""
        return self.exchange.rank

    def due(self, now: float) -> bool:
        """Whether :meth:`maybe_publish` at rank 0's clock ``now`` publishes anything (a
        collective: rank 0 decides for all)."""
        return self.exchange.any(self.rank == 0 and self._due(now) is not None)

    def maybe_publish(self, now_wall: float, *, event_time: int | None = None,
                      meta: Mapping[str, Any] | None = None) -> VersionManifest | None:
        """:meth:`Publisher.maybe_publish` with rank 0's clock and intervals deciding for
        every rank; every rank returns the manifest (or None)."""
        now = float(now_wall)
        due = self._due(now) if self.rank == 0 else None
        kind, dense = gather_json(self.exchange, [due[0].value, due[1]]
                                  if due is not None else None)[0] or (None, False)
        if kind is None:
            return None
        m = self._publish(VersionKind(kind), sparse=True, dense=dense, event_time=event_time,
                          meta=meta)
        if self.rank == 0:
            self._mark(now, dense, m)
        return m

    def _publish(self, kind: VersionKind, *, sparse: bool, dense: bool,
                 event_time: int | None, meta: Mapping[str, Any] | None
                 ) -> VersionManifest | None:
        """One version, every rank writing its part; every rank returns its manifest (rank
        0's, sent to the others). Any rank's failure (a full disk) raises on every rank, and
        nothing is published."""
        event_time = _check_event_time(event_time, "ShardedPublisher")
        meta_d = _check_meta(meta, "ShardedPublisher")
        pending: dict[str, int] = {}
        error: BaseException | None = None
        manifest: VersionManifest | None = None
        if self.rank == 0:
            told = False

            def build(tmp: Path, version: int, head: int | None) -> VersionManifest | None:
                nonlocal told
                k, sp, dn, incremental = self._decide(kind, sparse, dense, head)
                told = True
                plan = {"tmp": str(tmp.relative_to(self.registry.root)), "kind": k.value,
                        "sparse": sp, "dense": dn}
                gather_json(self.exchange, plan)
                return self._write_part(plan, tmp, pending, version=version,
                                        base=head if incremental else None,
                                        event_time=event_time, meta=meta_d)

            try:
                manifest = self.registry._commit(build, self._registry_info(None))
                if manifest is not None and manifest.kind is VersionKind.FULL \
                        and self.config.auto_gc:
                    self.registry.gc(self.config.keep_full)
            except Exception as e:  # every rank must learn of it: below
                error = e
                if not told:
                    gather_json(self.exchange, None)
        else:
            plan = gather_json(self.exchange, None)[0]
            if plan is not None:
                try:
                    self._write_part(plan, self.registry.root / plan["tmp"], pending)
                except Exception as e:
                    error = e
        outcome = gather_json(self.exchange, {
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "manifest": None if manifest is None else manifest.to_json().decode()})
        failed = [f"rank {r}: {o['error']}" for r, o in enumerate(outcome) if o["error"]]
        if failed:
            if error is not None and not isinstance(error, OSError):
                raise error
            raise OSError(f"rank {self.rank}: publish to {self.registry.root} failed: "
                          f"{'; '.join(failed)}") from error
        if outcome[0]["manifest"] is None:
            return None
        if manifest is None:
            manifest = VersionManifest.from_json(outcome[0]["manifest"].encode(), "rank 0")
        self._last_version = manifest.version
        self._published_cut = dict(manifest.table_versions)
        self._cut.update(pending)
        for name, t in self.tables.items():
            t.forget_expired_before(self._cut[name])
        return manifest

    def _write_part(self, plan: Mapping[str, Any], tmp: Path, pending: dict[str, int], *,
                    version: int = 0, base: int | None = None, event_time: int | None = None,
                    meta: dict[str, Any] | None = None) -> VersionManifest | None:
        """Every rank: cut its shard's deltas, agree on the table versions, write its part
        under ``tmp``, and send rank 0 the parts' records; rank 0 returns the manifest
        (``None``: an empty delta, nothing published). ``pending`` gets this rank's cut."""
        ex = self.exchange
        kind = VersionKind(plan["kind"])
        try:
            deltas, cut = self._cut_tables(kind, bool(plan["sparse"]))
            mine: dict[str, Any] | str = {
                name: [v, deltas[name].num_rows if name in deltas else 0,
                       int(deltas[name].expired.shape[0]) if name in deltas else 0]
                for name, v in cut.items()}
        except Exception as e:
            mine = f"{type(e).__name__}: {e}"
        shards = gather_json(ex, mine)
        _raise_failed(shards, "cutting the shards' deltas")
        pending.update(cut)
        versions = {name: max(int(s[name][0]) for s in shards) for name in cut}
        rows = {name: sum(int(s[name][1]) for s in shards) for name in deltas}
        expired = {name: sum(int(s[name][2]) for s in shards) for name in deltas}
        if kind is VersionKind.DELTA and not plan["dense"] and self.config.skip_empty \
                and not any(rows.values()) and not any(expired.values()):
            return None
        local = {name: dataclasses.replace(d, from_version=self._published_cut[name],
                                           to_version=versions[name])
                 for name, d in deltas.items()}
        try:
            files: dict[str, Any] | str = self._write_tables(
                tmp, local, kind is VersionKind.FULL, self.rank, ex.world)
        except Exception as e:
            files = f"{type(e).__name__}: {e}"
        records = gather_json(ex, files)
        _raise_failed(records, "writing the parts of the version")
        if self.rank:
            return None
        state = self._checked_dense(bool(plan["dense"]))
        delta_info = {name: {"from_version": self._published_cut[name],
                             "to_version": versions[name], "rows": rows[name],
                             "expired": expired[name],
                             "with_state": self.config.with_state}
                      for name in deltas}
        return self._manifest(tmp, version, kind, base, versions, delta_info, state,
                              {k: v for r in records for k, v in r.items()},
                              event_time, meta or {}, parts=ex.world)


def _raise_failed(answers: list[Any], what: str) -> None:
    """Raise on every rank when any rank answered an error (a string) instead of a result."""
    failed = [f"rank {r}: {a}" for r, a in enumerate(answers) if isinstance(a, str)]
    if failed:
        raise OSError(f"{what} failed: {'; '.join(failed)}")
