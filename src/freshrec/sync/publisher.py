"""The publisher: turns the trainer's tables and dense parameters into registry versions."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from freshrec._io import MANIFEST
from freshrec.errors import InputError, TrainingDivergedError
from freshrec.sync._format import (
    dense_spec,
    dir_bytes,
    file_record,
    write_dense,
    write_table_delta,
)
from freshrec.sync.config import PublisherConfig
from freshrec.sync.registry import (
    DAMAGE_ERRORS,
    Registry,
    VersionKind,
    VersionManifest,
    part_name,
    writing,
)
from freshrec.table import EmbeddingTable, TableDelta

__all__ = ["Publisher", "model_fingerprint"]

log = logging.getLogger(__name__)

DenseStateFn = Callable[[], Mapping[str, torch.Tensor]]


def model_fingerprint(
    tables: Mapping[str, EmbeddingTable], dense: Mapping[str, Any]
) -> dict[str, Any]:
    """Registry info for a model: a fingerprint over table layouts and dense shapes.

    ``dense`` maps parameter names to ``{"dtype", "shape"}``.

    Examples
    --------
    >>> from freshrec.table import TableConfig
    >>> info = model_fingerprint({"u": EmbeddingTable(TableConfig(name="u", dim=4))}, {})
    >>> info["tables"]["u"]["dim"], len(info["fingerprint"])
    (4, 16)
    """
    tinfo = {
        name: {"fingerprint": t.config.fingerprint(), "dim": t.dim,
               "optimizer": t.config.optimizer.kind.value, "config": t.config.to_dict()}
        for name, t in sorted(tables.items())
    }
    key = json.dumps({"tables": {n: i["fingerprint"] for n, i in tinfo.items()},
                      "dense": dict(sorted(dense.items()))}, sort_keys=True)
    return {"fingerprint": hashlib.sha256(key.encode()).hexdigest()[:16], "tables": tinfo,
            "dense": dict(dense)}


def _as_table_dict(
    tables: Mapping[str, EmbeddingTable] | Sequence[EmbeddingTable], owner: str
) -> dict[str, EmbeddingTable]:
    items = tables.items() if isinstance(tables, Mapping) else [(t.name, t) for t in tables]
    out: dict[str, EmbeddingTable] = {}
    for key, t in items:
        if not isinstance(t, EmbeddingTable):
            raise InputError(f"{owner}: expected EmbeddingTable values, got {type(t).__name__}")
        if key != t.name:
            raise InputError(f"{owner}: table {t.name!r} is stored under key {key!r}")
        if key in out:
            raise InputError(f"{owner}: duplicate table name {key!r}")
        out[key] = t
    if not out:
        raise InputError(f"{owner}: at least one table is required")
    return out


def _check_event_time(event_time: Any, owner: str) -> int | None:
    if event_time is None:
        return None
    if isinstance(event_time, bool) or not isinstance(event_time, int) or event_time < 0:
        raise InputError(f"{owner}: event_time must be an int >= 0 or None, got {event_time!r}")
    return int(event_time)


def _check_meta(meta: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    if meta is None:
        return {}
    try:
        return json.loads(json.dumps(dict(meta)))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as e:
        raise InputError(f"{owner}: meta must be JSON-serialisable ({e})") from e


class Publisher:
    """Publishes full snapshots, sparse deltas and dense parameters of a model to a registry.

    The publisher owns the tables' delta export: each publish closes the open version of every
    table (:meth:`EmbeddingTable.export_delta`) and remembers where it cut, so each sparse
    delta holds exactly the rows written (and fids expired) since the previous publish. Call
    it from the training loop between steps (the dense state is read when publishing);
    ``maybe_publish(now_wall)`` decides what is due from the configured wall-clock intervals.

    The first publish of a publisher is always a full snapshot, since a delta needs a base the
    registry holds; so is a publish that finds ``HEAD`` moved (a rollback, another
    publisher), and one whose base fails verification (every file of the previous version is
    checked before a delta is published on top of it, and that the versions before it back
    to the last full snapshot still have their manifests): a delta on a damaged version
    could never be served. Damage to the other files of those older versions is not looked
    for here (it would mean reading the whole chain at every publish); subscribers skip it
    and ``freshrec registry verify`` reports it. A publish that fails leaves nothing behind and loses nothing: the next
    one exports again from the last successful cut. Failing to write (a full disk) raises
    :class:`~freshrec.errors.RegistryWriteError`, naming the file.

    Parameters
    ----------
    registry : Registry
    tables : mapping of name to EmbeddingTable, or a sequence of tables
    dense_state_fn : callable returning a state dict, optional
        E.g. ``model.state_dict`` of the dense part; called at each dense publish.
    config : PublisherConfig, optional

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from freshrec.table import TableConfig
    >>> table = EmbeddingTable(TableConfig(name="user", dim=4))
    >>> pub = Publisher(Registry(tempfile.mkdtemp()), [table], lambda: {})
    >>> pub.publish_full(event_time=100).kind.value
    'full'
    >>> _ = table.lookup(np.array([1, 2, 3], np.uint64), now=101, train=True)
    >>> m = pub.publish_sparse(event_time=101)
    >>> m.version, m.base, m.delta_rows
    (2, 1, 3)
    >>> pub.publish_sparse() is None          # nothing written since
    True
    """

    def __init__(
        self,
        registry: Registry,
        tables: Mapping[str, EmbeddingTable] | Sequence[EmbeddingTable],
        dense_state_fn: DenseStateFn | None = None,
        config: PublisherConfig | None = None,
    ) -> None:
        self.registry = registry
        self.tables = _as_table_dict(tables, "Publisher")
        self.dense_state_fn = dense_state_fn
        self.config = config if config is not None else PublisherConfig()
        self._last_version: int | None = None
        self._cut: dict[str, int] = {}
        self._timers: dict[str, float] | None = None
        self._info: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (f"Publisher(registry={str(self.registry.root)!r}, tables={list(self.tables)}, "
                f"last_version={self._last_version})")

    @property
    def last_version(self) -> int | None:
        """Registry version of this publisher's last publish (``None`` before the first)."""
        return self._last_version

    @property
    def table_versions(self) -> dict[str, int]:
        """Per table, the version at which the last publish cut (the next delta starts there)."""
        return dict(self._cut)

    # ------------------------------------------------------------------ scheduling
    def maybe_publish(
        self, now_wall: float, *, event_time: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> VersionManifest | None:
        """Publish whatever is due at wall time ``now_wall`` (seconds, any monotonic clock).

        Intervals count from the first call or the last publish of that kind made here. A
        full snapshot is due every ``full_interval_s`` (and at the first publish); a dense
        publish every ``dense_interval_s`` (with the sparse rows); a sparse delta every
        ``sparse_interval_s``. Returns the published manifest or ``None``.
        """
        now = float(now_wall)
        due = self._due(now)
        if due is None:
            return None
        kind, dense = due
        m = self._publish(kind, sparse=True, dense=dense, event_time=event_time, meta=meta)
        self._mark(now, dense, m)
        return m

    def _due(self, now: float) -> tuple[VersionKind, bool] | None:
        """What :meth:`maybe_publish` publishes at ``now``: (kind, with the dense part), or
        ``None``. The first call starts the intervals."""
        cfg = self.config
        if self._timers is None:
            self._timers = {"full": now, "dense": now, "sparse": now}
            if self._last_version is not None:
                return None
        t = self._timers
        if self._last_version is None or now - t["full"] >= cfg.full_interval_s:
            return VersionKind.FULL, True
        dense_due = now - t["dense"] >= cfg.dense_interval_s
        if not (dense_due or now - t["sparse"] >= cfg.sparse_interval_s):
            return None
        return VersionKind.DELTA, dense_due

    def _mark(self, now: float, dense: bool, m: VersionManifest | None) -> None:
        """Restart the intervals of what was published at ``now`` (``m``; a delta asked for
        may have become a full snapshot)."""
        assert self._timers is not None
        self._timers["sparse"] = now
        if dense or (m is not None and m.kind is VersionKind.FULL):
            self._timers["dense"] = now
        if m is not None and m.kind is VersionKind.FULL:
            self._timers["full"] = now

    # ------------------------------------------------------------------ publishing
    def publish_full(
        self, *, event_time: int | None = None, meta: Mapping[str, Any] | None = None
    ) -> VersionManifest:
        """Publish a full snapshot: every table (with optimizer state), the dense parameters
        and, when this publisher's last publish is ``HEAD``, the delta since it."""
        m = self._publish(VersionKind.FULL, sparse=True, dense=True, event_time=event_time,
                          meta=meta)
        assert m is not None
        return m

    def publish_sparse(
        self, *, event_time: int | None = None, meta: Mapping[str, Any] | None = None
    ) -> VersionManifest | None:
        """Publish the rows written and fids expired since the last publish.

        Returns ``None`` (publishing nothing) when nothing changed and ``skip_empty`` is set.
        """
        return self._publish(VersionKind.DELTA, sparse=True, dense=False,
                             event_time=event_time, meta=meta)

    def publish_dense(
        self, *, event_time: int | None = None, meta: Mapping[str, Any] | None = None
    ) -> VersionManifest:
        """Publish the dense parameters alone (the tables' state is unchanged)."""
        m = self._publish(VersionKind.DELTA, sparse=False, dense=True, event_time=event_time,
                          meta=meta)
        assert m is not None
        return m

    def _dense_state(self) -> dict[str, torch.Tensor]:
        if self.dense_state_fn is None:
            return {}
        state = self.dense_state_fn()
        if not isinstance(state, Mapping):
            raise InputError(f"Publisher: dense_state_fn must return a mapping of name to "
                             f"tensor, got {type(state).__name__}")
        return dict(state)

    def _registry_info(self, dense: Mapping[str, torch.Tensor] | None) -> dict[str, Any]:
        if self._info is None:
            state = dense if dense is not None else self._dense_state()
            self._info = model_fingerprint(self.tables, dense_spec(state, "Publisher"))
        return self._info

    def _damage(self, version: int) -> str | None:
        """Why a delta on ``version`` could not be served, or ``None``: every file of
        ``version`` is verified, and each older version its state is built from must still
        be there with its manifest (a quick look: their other files are not read)."""
        try:
            self.registry.verify(version)
            self.registry.check_chain(version)
        except DAMAGE_ERRORS as e:
            return str(e)
        return None

    def _decide(self, kind: VersionKind, sparse: bool, dense: bool, head: int | None
                ) -> tuple[VersionKind, bool, bool, bool]:
        """(kind, sparse, dense, incremental) of the version to publish on ``head``: a delta
        (or a full snapshot with its delta) only on this publisher's last version when that
        verifies; else a full snapshot alone."""
        incremental = head is not None and head == self._last_version
        damage = self._damage(head) if incremental and head is not None else None
        if damage is not None:
            log.warning("registry=%s base version %s is damaged (%s): publishing a full "
                        "snapshot", self.registry.root, head, damage)
            incremental = False
        elif not incremental and kind is not VersionKind.FULL:
            log.warning("registry=%s HEAD=%s is not this publisher's last version %s: "
                        "publishing a full snapshot", self.registry.root, head,
                        self._last_version)
        if not incremental:
            return VersionKind.FULL, False, True, False
        return kind, sparse, dense, True

    def _checked_dense(self, dense: bool) -> dict[str, torch.Tensor] | None:
        """The dense state to publish (``None`` without ``dense``), checked against the
        registry's."""
        state = self._dense_state() if dense else None
        info = self._registry_info(state)
        if state is not None:
            spec = dense_spec(state, "Publisher")
            if spec != info["dense"]:
                raise InputError(f"Publisher: dense parameters changed names, dtypes or "
                                 f"shapes since the first publish: {spec} vs {info['dense']}")
            for name, t in state.items():  # a diverged model is not served
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise TrainingDivergedError(
                        f"Publisher: dense parameter {name!r} holds "
                        f"{int((~torch.isfinite(t)).sum())} NaN or infinite values: the "
                        f"model diverged, nothing was published")
        return state

    def _cut_tables(self, kind: VersionKind, sparse: bool
                    ) -> tuple[dict[str, TableDelta], dict[str, int]]:
        """Each table's delta since the last cut (with ``sparse``) and where it cuts now."""
        deltas: dict[str, TableDelta] = {}
        cut: dict[str, int] = {}
        for name, t in self.tables.items():
            if sparse:
                deltas[name] = t.export_delta(self._cut[name],
                                              with_state=self.config.with_state)
                cut[name] = deltas[name].to_version
            elif kind is VersionKind.FULL:
                cut[name] = t.export_delta(t.version, with_state=False).to_version
            else:
                cut[name] = self._cut[name]
        return deltas, cut

    def _write_tables(self, tmp: Path, deltas: Mapping[str, TableDelta], full: bool,
                      part: int, parts: int) -> dict[str, dict[str, int]]:
        """Write the table deltas (and with ``full`` the tables' snapshots) as part ``part``
        of ``parts`` under ``tmp``; returns their manifests' records."""
        files: dict[str, dict[str, int]] = {}

        def put(rel: str, write: Callable[[Path], None]) -> None:
            with writing(self.registry.root, tmp / rel):
                write(tmp / rel)
            files[f"{rel}/{MANIFEST}"] = file_record(tmp / rel / MANIFEST)

        for name, d in deltas.items():
            put(part_name("delta", name, part, parts), partial(write_table_delta, delta=d))
        if full:
            for name, t in self.tables.items():
                put(part_name("full", name, part, parts), t.save)
        return files

    def _manifest(self, tmp: Path, version: int, kind: VersionKind, base: int | None,
                  cut: Mapping[str, int], delta_info: dict[str, dict[str, Any]],
                  state: Mapping[str, torch.Tensor] | None, files: dict[str, dict[str, int]],
                  event_time: int | None, meta: dict[str, Any], parts: int = 1
                  ) -> VersionManifest:
        """Write the dense part (with ``state``) and return the version's manifest."""
        if state is not None:
            with writing(self.registry.root, tmp / "dense"):
                write_dense(tmp / "dense", state, "Publisher")
            files["dense/" + MANIFEST] = file_record(tmp / "dense" / MANIFEST)
        return VersionManifest(
            version=version, kind=kind, base=base,
            fingerprint=self._registry_info(None)["fingerprint"], table_versions=dict(cut),
            deltas=delta_info, full=kind is VersionKind.FULL, dense=state is not None,
            created_unix_s=time.time(), event_time=event_time, meta=meta, files=files,
            delta_bytes=dir_bytes(tmp / "delta") if delta_info else 0,
            full_bytes=dir_bytes(tmp / "full") if kind is VersionKind.FULL else 0,
            dense_bytes=dir_bytes(tmp / "dense") if state is not None else 0, parts=parts,
        )

    def _publish(
        self, kind: VersionKind, *, sparse: bool, dense: bool, event_time: int | None,
        meta: Mapping[str, Any] | None,
    ) -> VersionManifest | None:
        owner = "Publisher"
        event_time = _check_event_time(event_time, owner)
        meta_d = _check_meta(meta, owner)
        cut: dict[str, int] = {}

        def build(tmp: Path, version: int, head: int | None) -> VersionManifest | None:
            k, sp, dn, incremental = self._decide(kind, sparse, dense, head)
            state = self._checked_dense(dn)
            deltas, now_cut = self._cut_tables(k, sp)
            cut.update(now_cut)
            changed = any(d.num_rows or d.expired.shape[0] for d in deltas.values())
            if k is VersionKind.DELTA and not dn and not changed and self.config.skip_empty:
                return None
            files = self._write_tables(tmp, deltas, k is VersionKind.FULL, 0, 1)
            delta_info = {name: {"from_version": d.from_version, "to_version": d.to_version,
                                 "rows": d.num_rows, "expired": int(d.expired.shape[0]),
                                 "with_state": d.states is not None}
                          for name, d in deltas.items()}
            return self._manifest(tmp, version, k, head if incremental else None, cut,
                                  delta_info, state, files, event_time, meta_d)

        m = self.registry._commit(build, self._registry_info(None))
        if m is None:
            return None
        self._last_version = m.version
        self._cut = dict(m.table_versions)
        for name, t in self.tables.items():
            t.forget_expired_before(self._cut[name])
        if m.kind is VersionKind.FULL and self.config.auto_gc:
            self.registry.gc(self.config.keep_full)
        return m
