"""The subscriber: brings a local model (tables + dense parameters) to a registry version."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum, unique
from typing import Any

import torch

from freshrec.errors import (
    IncompatibleFormatError,
    InputError,
    SnapshotCorruptError,
    StaleDeltaError,
)
from freshrec.sync._format import (
    load_table_parts,
    read_delta_parts,
    read_dense,
    table_from_parts,
)
from freshrec.sync.config import SubscriberConfig
from freshrec.sync.registry import DAMAGE_ERRORS, Registry, VersionKind, VersionManifest
from freshrec.table import EmbeddingTable, TableDelta

__all__ = ["ModelState", "PlanStep", "StepAction", "Subscriber", "SyncPlan"]

log = logging.getLogger(__name__)

LoadDenseFn = Callable[[dict[str, torch.Tensor]], Any]


@unique
class StepAction(StrEnum):
    """What a subscriber does with one version of a plan."""

    LOAD_FULL = "load_full"
    """Replace every table's contents with the version's full snapshot."""
    APPLY_DELTA = "apply_delta"
    """Apply the version's table deltas in place (rows upserted, expired fids removed)."""
    MARK = "mark"
    """A rollback version: nothing to apply, the state is already that of its base."""


@dataclass(frozen=True, kw_only=True)
class PlanStep:
    """One version to apply: its action, table bytes to read and whether it holds dense."""

    version: int
    action: StepAction
    nbytes: int
    dense: bool


@dataclass(frozen=True, kw_only=True)
class SyncPlan:
    """The versions that bring a model at ``from_version`` to ``to_version``, in order.

    Either deltas only (the local version is on the newest version's chain and reading the
    deltas costs no more than reloading), or a full snapshot followed by deltas.
    """

    from_version: int | None
    to_version: int | None
    steps: tuple[PlanStep, ...] = ()

    @property
    def reloads(self) -> bool:
        """Whether the first step loads a full snapshot."""
        return bool(self.steps) and self.steps[0].action is StepAction.LOAD_FULL

    @property
    def nbytes(self) -> int:
        """Table bytes read by the plan."""
        return sum(s.nbytes for s in self.steps)

    @property
    def versions(self) -> list[int]:
        """The versions of the steps."""
        return [s.version for s in self.steps]


@dataclass(frozen=True, kw_only=True)
class ModelState:
    """A model materialised from the registry: tables, dense state dict and its manifest."""

    version: int
    tables: dict[str, EmbeddingTable]
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    manifest: VersionManifest | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """The JSON metadata published with this state."""
        return dict(self.manifest.meta) if self.manifest is not None else {}

    @property
    def event_time(self) -> int | None:
        """Event-time watermark of the newest training data in this state."""
        return self.manifest.event_time if self.manifest is not None else None


@dataclass
class _Staged:
    """Everything a plan needs, read and verified before anything is applied."""

    deltas: dict[int, dict[str, TableDelta]] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] | None = None


def _anchor(table: EmbeddingTable, version: int) -> None:
    """Record that ``table`` now holds its source's state at ``version`` (an empty delta)."""
    table.apply_delta(
        TableDelta.empty(table.name, table.config.fingerprint(), dim=table.dim, from_version=0,
                         to_version=version),
        check_version=False,
    )


class Subscriber:
    """Follows a registry: plans and applies the versions that reach its ``HEAD``.

    The subscriber remembers the version its local model is at (``version``; ``None`` for no
    model). :meth:`update` reads and verifies every file a plan needs (checksums, and that
    each table delta starts at the table version the model holds) before changing anything,
    so a corrupt or missing file raises and leaves the model at its version. A rollback is
    picked up the same way: the newest version's state is that of an older one, so the plan
    reloads a full snapshot and the deltas up to it.

    A damaged version (a file fails its checks, or its manifest is missing) is remembered in
    :attr:`damaged`, and plans go around it: to the newest version whose way avoids every
    damaged one, i.e. the deltas before the damage, then the first full snapshot published
    after it. :meth:`materialize` does this at once; :meth:`update` raises the first time it
    meets a damaged version (so callers count and report it) and goes around it from the
    next call on.

    Parameters
    ----------
    registry : Registry
    version : int, optional
        The version of the local model the subscriber starts with (``None``: no model yet).
    config : SubscriberConfig, optional
    damaged : mapping of version to reason, optional
        Versions already known to be damaged (e.g. by an earlier subscriber), skipped.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from freshrec.sync import Publisher, Registry
    >>> from freshrec.table import TableConfig
    >>> reg = Registry(tempfile.mkdtemp())
    >>> trained = EmbeddingTable(TableConfig(name="user", dim=4))
    >>> pub = Publisher(reg, [trained])
    >>> _ = pub.publish_full()
    >>> _ = trained.lookup(np.array([1, 2], np.uint64), now=10, train=True)
    >>> _ = pub.publish_sparse()
    >>> served = EmbeddingTable(TableConfig(name="user", dim=4))
    >>> sub = Subscriber(reg)
    >>> sub.plan().versions, sub.update({"user": served}), len(served)
    ([1, 2], 2, 2)
    >>> bool((served.lookup([1, 2]) == trained.lookup([1, 2])).all())
    True
    """

    def __init__(
        self, registry: Registry, *, version: int | None = None,
        config: SubscriberConfig | None = None, damaged: Mapping[int, str] | None = None,
    ) -> None:
        self.registry = registry
        self._version = version
        self.config = config if config is not None else SubscriberConfig()
        self._damaged = dict(damaged) if damaged is not None else {}

    def __repr__(self) -> str:
        return f"Subscriber(registry={str(self.registry.root)!r}, version={self._version})"

    @property
    def version(self) -> int | None:
        """The registry version the local model is at (``None`` when unknown or none)."""
        return self._version

    @property
    def damaged(self) -> dict[int, str]:
        """Versions found damaged (skipped by plans), with the reason (naming the file)."""
        return dict(self._damaged)

    @contextmanager
    def _blame(self, version: int) -> Iterator[None]:
        """Remember ``version`` as damaged if reading it in the block fails its checks."""
        try:
            yield
        except DAMAGE_ERRORS as e:
            if self.registry.has(version) and version not in self._damaged:
                self._damaged[version] = str(e)  # (a collected version is gone, not damaged)
                log.warning("registry=%s version=%d is damaged, skipped from now on: %s",
                            self.registry.root, version, e)
            raise

    # ------------------------------------------------------------------ planning
    def plan(self, version: int | None = None, *, target: int | None = None) -> SyncPlan:
        """The versions that bring a model at ``version`` (default: this subscriber's) to
        ``target`` (default: the newest version it can reach, normally ``HEAD``), in order.

        Walks back from the target along ``base`` links. If ``version`` is on that chain, the
        deltas after it are one way; the newest full snapshot on the chain plus the deltas after
        it is the other. With ``prefer="bytes"`` the way reading fewer table bytes wins (ties:
        deltas); versions removed by garbage collection make only the full way possible. A way
        never passes a version known to be damaged (:attr:`damaged`); without ``target``, when
        no way reaches ``HEAD`` the newest version below it that can be reached is planned.

        Raises
        ------
        StaleDeltaError
            No way exists (the history was collected or damaged and no full snapshot remains
            on it).
        """
        local = self._version if version is None else int(version)
        reg = self.registry
        head = reg.head() if target is None else int(target)
        if head is None or local == head:
            return SyncPlan(from_version=local, to_version=head)
        if target is not None and not reg.has(head):
            raise InputError(f"registry {reg.root}: no version {head}")
        present = set(reg.versions())
        unreachable: set[int] = set()
        for to in [head] if target is not None else sorted(present, reverse=True):
            if to == local:
                return SyncPlan(from_version=local, to_version=to)
            if to in unreachable or to in self._damaged:
                continue
            steps = self._way(local, to, present, unreachable)
            if steps is not None:
                return SyncPlan(from_version=local, to_version=to, steps=tuple(steps))
        skipped = f" (damaged: {sorted(self._damaged)})" if self._damaged else ""
        raise StaleDeltaError(
            f"registry {reg.root}: no way from version {local} to {head}: the history was "
            f"garbage-collected or is damaged{skipped} and no full snapshot remains on it"
        )

    def _way(self, local: int | None, to: int, present: set[int],
             unreachable: set[int]) -> list[PlanStep] | None:
        """The cheaper way from ``local`` to ``to`` (see :meth:`plan`), or ``None`` when none
        exists; then every version walked through is added to ``unreachable``."""
        reg = self.registry
        rev: list[PlanStep] = []
        full_way: list[PlanStep] | None = None
        delta_way: list[PlanStep] | None = None
        cur: int | None = to
        while cur is not None:
            if cur == local:
                delta_way = rev[::-1]
                break
            if cur not in present or cur in self._damaged:
                break
            try:
                with self._blame(cur):
                    m = reg.manifest(cur)
            except DAMAGE_ERRORS:
                break
            if m.kind is VersionKind.FULL and full_way is None:
                full_way = [PlanStep(version=cur, action=StepAction.LOAD_FULL,
                                     nbytes=m.full_bytes, dense=m.dense), *rev[::-1]]
                if local is None or cur < local:  # versions only decrease: no delta way
                    break
            action = StepAction.MARK if m.kind is VersionKind.ROLLBACK else StepAction.APPLY_DELTA
            rev.append(PlanStep(version=cur, action=action, nbytes=m.delta_bytes,
                                dense=m.dense))
            cur = m.base
        if delta_way is not None and full_way is not None:
            cost_d = sum(s.nbytes for s in delta_way)
            cost_f = sum(s.nbytes for s in full_way)
            return delta_way if self.config.prefer == "deltas" or cost_d <= cost_f else full_way
        if delta_way is None and full_way is None:
            unreachable.update(s.version for s in rev)  # their ways are the rest of this one
        return delta_way if delta_way is not None else full_way

    # ------------------------------------------------------------------ applying
    def _check_tables(self, tables: Mapping[str, EmbeddingTable]) -> None:
        info = self.registry.info()
        if info is None:
            raise InputError(f"registry {self.registry.root}: empty (no version published)")
        want = info["tables"]
        if set(want) != set(tables):
            raise IncompatibleFormatError(
                f"registry {self.registry.root} holds tables {sorted(want)}, the local model "
                f"has {sorted(tables)}"
            )
        for name, t in tables.items():
            if t.config.fingerprint() != want[name]["fingerprint"]:
                raise IncompatibleFormatError(
                    f"registry {self.registry.root}: table {name!r} is dim "
                    f"{want[name]['dim']} {want[name]['optimizer']} there, dim {t.dim} "
                    f"{t.config.optimizer.kind.value} in the local model"
                )

    def _stage(self, steps: Sequence[PlanStep], versions: dict[str, int]) -> _Staged:
        """Read and verify every part ``steps`` need; check table-version continuity.

        ``versions``: the table versions the model holds before the first step.
        """
        reg = self.registry
        staged = _Staged()
        expect = dict(versions)
        for step in steps:
            with self._blame(step.version):
                m = reg.verify(step.version)  # every file of the version, as on disk now
            if step.action is StepAction.LOAD_FULL:
                expect = dict(m.table_versions)
            elif step.action is StepAction.APPLY_DELTA:
                parts = {}
                for name in sorted(m.deltas):
                    with self._blame(m.version):
                        d = read_delta_parts(reg.table_parts(m.version, "delta", name))
                    if name not in expect or d.table != name:
                        raise SnapshotCorruptError(
                            f"{reg.path_of(m.version)}/delta/{name}: delta of table "
                            f"{d.table!r} is not one of the model's tables {sorted(expect)}"
                        )
                    if d.from_version != expect[name]:
                        raise StaleDeltaError(
                            f"registry {reg.root}: version {m.version} holds table {name!r} "
                            f"from table version {d.from_version}, but the model is at "
                            f"{expect[name]} (a gap)"
                        )
                    expect[name] = d.to_version
                    parts[name] = d
                staged.deltas[m.version] = parts
            if expect != m.table_versions:
                raise StaleDeltaError(
                    f"registry {reg.root}: after version {m.version} the model would hold "
                    f"table versions {expect}, the manifest says {m.table_versions} (a gap)"
                )
        dense_steps = [s for s in steps if s.dense]
        if dense_steps:
            with self._blame(dense_steps[-1].version):
                staged.dense = read_dense(reg.part_path(dense_steps[-1].version, "dense"))
        return staged

    def _apply(
        self, steps: Sequence[PlanStep], staged: _Staged, tables: Mapping[str, EmbeddingTable]
    ) -> None:
        reg = self.registry
        for step in steps:
            m = reg.manifest(step.version)
            if step.action is StepAction.LOAD_FULL:
                for name, t in tables.items():
                    load_table_parts(t, reg.table_parts(m.version, "full", name),
                                     chunk_rows=self.config.chunk_rows)
                    _anchor(t, m.table_versions[name])
            elif step.action is StepAction.APPLY_DELTA:
                for name, d in staged.deltas[m.version].items():
                    t = tables[name]
                    t.apply_delta(d, chunk_rows=self.config.chunk_rows)
                    if d.expired.shape[0]:
                        # apply_delta logs the fids it removes for a later export_delta; a
                        # subscriber never exports, so drop the log instead of growing it.
                        t.forget_expired_before(t.version)
            self._version = step.version

    def update(
        self,
        tables: Mapping[str, EmbeddingTable] | Sequence[EmbeddingTable],
        load_dense_fn: LoadDenseFn | None = None,
    ) -> int | None:
        """Bring ``tables`` (in place) and the dense parameters to ``HEAD``; returns the version.

        Parameters
        ----------
        tables : mapping of name to EmbeddingTable, or a sequence of tables
            The local model's tables, at :attr:`version` (any contents when it is ``None``).
        load_dense_fn : callable, optional
            Called once with the newest dense state dict on the way (e.g.
            ``model.load_state_dict``), after the tables are updated.

        Raises
        ------
        SnapshotCorruptError
            A file fails its checksum (the message names it); nothing was changed.
        StaleDeltaError
            A delta does not start where the model is (a gap); nothing was changed.
        IncompatibleFormatError
            The local tables are not the registry's (names, dims, optimizers).
        """
        tdict = (dict(tables) if isinstance(tables, Mapping)
                 else {t.name: t for t in tables})
        for attempt in (0, 1):
            plan = self.plan()
            if not plan.steps:
                return self._version
            self._check_tables(tdict)
            try:
                versions = {name: t.applied_version for name, t in tdict.items()}
                staged = self._stage(plan.steps, versions)
                break
            except (SnapshotCorruptError, InputError):
                gone = [v for v in plan.versions if not self.registry.has(v)]
                if attempt or not gone:
                    raise
                log.info("registry=%s versions %s were collected while reading; replanning",
                         self.registry.root, gone)
        try:
            self._apply(plan.steps, staged, tdict)
        except BaseException:
            if plan.reloads or self._version != plan.from_version:
                self._version = None  # tables may be partially replaced: reload next time
            raise
        if staged.dense is not None and load_dense_fn is not None:
            load_dense_fn(staged.dense)
        log.info("registry=%s subscriber from=%s to=%s steps=%d reload=%s bytes=%d",
                 self.registry.root, plan.from_version, self._version, len(plan.steps),
                 plan.reloads, plan.nbytes)
        return self._version

    def materialize(self, version: int | None = None) -> ModelState:
        """A fresh model state (new tables and dense dict) at ``version`` (default: the newest
        version that can be loaded, normally ``HEAD``).

        Loads the nearest full snapshot on the version's chain and applies the deltas after
        it; does not change :attr:`version`. Without ``version``, a version found damaged on
        the way is added to :attr:`damaged` and the newest version whose chain avoids every
        damaged one is loaded instead.

        Raises
        ------
        SnapshotCorruptError
            ``version`` (or a version its state is built from) is damaged.
        StaleDeltaError
            No version can be loaded (every chain is damaged or collected).
        """
        reg = self.registry
        if reg.head() is None:
            raise InputError(f"registry {reg.root}: empty (no version published)")
        probe = Subscriber(reg, config=self.config, damaged=self._damaged)
        try:
            while True:
                known = len(probe._damaged)
                plan = probe.plan(target=version)
                try:
                    return probe._load(plan)
                except DAMAGE_ERRORS:
                    if version is not None or len(probe._damaged) == known:
                        raise
        finally:
            self._damaged.update(probe._damaged)

    def _load(self, plan: SyncPlan) -> ModelState:
        """New tables and dense dict from a plan that starts with a full snapshot."""
        reg = self.registry
        staged = self._stage(plan.steps, {})
        first = reg.manifest(plan.steps[0].version)
        tables = {}
        for name in sorted(first.table_versions):
            with self._blame(first.version):
                t = table_from_parts(reg.table_parts(first.version, "full", name))
            _anchor(t, first.table_versions[name])
            tables[name] = t
        self._apply(plan.steps[1:], staged, tables)
        assert plan.to_version is not None
        return ModelState(version=plan.to_version, tables=tables,
                          dense=staged.dense if staged.dense is not None else {},
                          manifest=reg.manifest(plan.to_version))
