"""New-row initialisation and conditional updates of a table kept in Redis.

**New-user init** (SmartNews: a new user starts from another model's estimate, not from
noise): a row created for a fid that neither the cache nor Redis has starts from the
configured source: ``fixed`` (a vector), ``table`` (the fid's row in another model's table
snapshot, with ``with_state`` its optimizer state too; fids it lacks keep the initializer)
or ``history_mean`` (the mean of the rows of the items in the example's history slot, e.g.
the user's recent clicks; an empty history keeps the initializer). :func:`prepare_new_rows`
reads the histories of a batch before its forward pass. On the simulator's DeepFM, which
reads the history as a slot of its own, only ``table`` helped (docs/store.md).

**Conditional updates** (SmartNews' limited embedding updates), applied to a step's result
before it is kept: ``min_events`` (a row changes only once its fid was in that many
training examples, counted at the steps; until then its value and optimizer state stay), ``dims`` (only these
columns change) and ``max_update_norm`` (a step's change of a row is scaled down to at most
this L2 norm). :func:`limit_rows` is the rule, as a pure function of the rows before and
after the step.

Examples
--------
>>> from freshrec.store.config import UpdateRulesConfig
>>> before = np.zeros((2, 3), np.float32)
>>> after = np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
>>> limit_rows(before, after, UpdateRulesConfig(max_update_norm=1.0), np.ones(2, bool)).tolist()
[[0.6000000238418579, 0.800000011920929, 0.0], [0.5773502588272095, 0.5773502588272095, 0.5773502588272095]]
>>> limit_rows(before, after, UpdateRulesConfig(dims=(1,)), np.array([True, False])).tolist()
[[0.0, 4.0, 0.0], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from freshrec.errors import ConfigError
from freshrec.store.config import NewUserInitConfig, NewUserSource, UpdateRulesConfig
from freshrec.table.table import EmbeddingTable, RowInitializer, rows_from_table

if TYPE_CHECKING:
    from freshrec.features.config import FeatureConfig
    from freshrec.features.jagged import JaggedBatch

__all__ = ["limit_rows", "row_initializer", "state_initializer", "history_means",
           "prepare_new_rows"]

#: ``fids -> (optimizer states, found mask)``, like a :data:`~freshrec.table.RowInitializer`
StateInitializer = Callable[[npt.NDArray[np.uint64]], tuple[np.ndarray, np.ndarray]]


def limit_rows(before: npt.NDArray[np.float32], after: npt.NDArray[np.float32],
               rules: UpdateRulesConfig, allowed: npt.NDArray[np.bool_]
               ) -> npt.NDArray[np.float32]:
    """Rows after a step as ``rules`` allow them: ``before`` where not ``allowed`` (too few
    events), only ``rules.dims`` changed, each row's change at most ``max_update_norm``."""
    out = np.where(allowed[:, None], after, before).astype(np.float32)
    if rules.dims:
        keep = np.ones(out.shape[1], bool)
        keep[list(rules.dims)] = False
        out[:, keep] = before[:, keep]
    if rules.max_update_norm is not None:
        change = out - before
        norm = np.linalg.norm(change, axis=1)
        over = norm > rules.max_update_norm
        if over.any():
            out[over] = before[over] + change[over] * (
                rules.max_update_norm / norm[over])[:, None].astype(np.float32)
    return out


def row_initializer(config: NewUserInitConfig, dim: int,
                    source: EmbeddingTable | None = None) -> RowInitializer | None:
    """The :data:`~freshrec.table.RowInitializer` of a ``fixed`` or ``table`` source (None for
    the others: ``none`` keeps the initializer, ``history_mean`` is per batch). ``source``:
    the ``table`` source's snapshot if already loaded.

    >>> init = row_initializer(NewUserInitConfig(source="fixed", value=(1.0, 2.0)), 2)
    >>> rows, mask = init(np.array([5, 6], np.uint64))
    >>> rows.tolist(), mask.tolist()
    ([[1.0, 2.0], [1.0, 2.0]], [True, True])
    """
    if config.source is NewUserSource.FIXED:
        value = np.asarray(config.value, np.float32)
        if value.shape != (dim,):
            raise ValueError(f"NewUserInitConfig: value has {value.shape[0]} numbers, the "
                             f"table's dim is {dim}")

        def fixed(fids: npt.NDArray[np.uint64]) -> tuple[np.ndarray, np.ndarray]:
            n = fids.shape[0]
            return np.tile(value, (n, 1)), np.ones(n, bool)

        return fixed
    if config.source is NewUserSource.TABLE:
        return rows_from_table(source if source is not None
                               else EmbeddingTable.from_snapshot(config.table_path))
    return None


def state_initializer(source: EmbeddingTable, state_dim: int) -> StateInitializer:
    """``fids -> (states, found)``: the optimizer state of each fid's row in ``source`` (a
    ``table`` source with ``with_state``), ``found`` False where ``source`` lacks the fid.

    >>> from freshrec.table import OptimizerConfig, TableConfig
    >>> other = EmbeddingTable(TableConfig(name="user", dim=2,
    ...                                    optimizer=OptimizerConfig(kind="rowwise_adagrad")))
    >>> _ = other.lookup(np.array([1], np.uint64), now=0, train=True)
    >>> _ = other.apply_gradients(np.array([1], np.uint64), np.array([[3.0, 4.0]], np.float32))
    >>> states, found = state_initializer(other, 1)(np.array([1, 2], np.uint64))
    >>> states.tolist(), found.tolist()
    ([[12.5], [0.0]], [True, False])
    """
    if source.config.state_dim != state_dim:
        raise ConfigError(f"NewUserInitConfig: with_state needs the snapshot's optimizer "
                          f"state to have {state_dim} numbers a row (the same optimizer), "
                          f"it has {source.config.state_dim}")

    def init(fids: npt.NDArray[np.uint64]) -> tuple[np.ndarray, np.ndarray]:
        found = source.find(fids) >= 0
        states = np.zeros((fids.shape[0], state_dim), np.float32)
        if found.any():
            got = source.read_rows(fids[found]).states
            assert got is not None  # read_rows reads the state by default
            states[found] = got
        return states, found

    return init


def history_means(user_fids: npt.NDArray[np.uint64], history: npt.NDArray[np.uint64],
                  offsets: npt.NDArray[np.int64], items: EmbeddingTable
                  ) -> dict[int, npt.NDArray[np.float32]]:
    """``{user fid: mean of its examples' history item rows}`` (users whose histories are
    all empty are left out); ``offsets`` delimit each example's history.

    >>> from freshrec.table import InitializerConfig, OptimizerConfig, TableConfig, TableDelta
    >>> items = EmbeddingTable(TableConfig(name="item", dim=2,
    ...     initializer=InitializerConfig(kind="zeros"), optimizer=OptimizerConfig(kind="sgd")))
    >>> items.apply_delta(TableDelta(table="item", fingerprint=items.config.fingerprint(),
    ...     from_version=0, to_version=0, fids=np.array([1, 2], np.uint64),
    ...     values=np.array([[4.0, 0.0], [0.0, 2.0]], np.float32),
    ...     last_seen=np.zeros(2, np.uint32), states=None, expired=np.empty(0, np.uint64)))
    >>> m = history_means(np.array([7, 8], np.uint64), np.array([1, 2], np.uint64),
    ...                   np.array([0, 2, 2]), items)
    >>> m[7].tolist(), 8 in m
    ([2.0, 1.0], False)
    """
    rows = items.lookup(history) if history.shape[0] else np.zeros((0, items.dim), np.float32)
    sums: dict[int, npt.NDArray[np.float32]] = {}
    counts: dict[int, int] = {}
    for b, user in enumerate(user_fids.tolist()):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        if hi > lo:
            sums[user] = sums.get(user, 0) + rows[lo:hi].sum(axis=0)
            counts[user] = counts.get(user, 0) + hi - lo
    return {u: (s / counts[u]).astype(np.float32) for u, s in sums.items()}


def prepare_new_rows(tables: Mapping[str, EmbeddingTable], features: FeatureConfig,
                     batch: JaggedBatch) -> None:
    """Before a batch's forward pass: give each table whose new rows start from the history
    mean the means of this batch's users (:meth:`RedisTable.expect_new_rows`)."""
    from freshrec.store.table import RedisTable

    for table in tables.values():
        if not isinstance(table, RedisTable):
            continue
        init = table.config.store.new_user
        if init.source is not NewUserSource.HISTORY_MEAN:
            continue
        slot_table = {s.name: s.table for s in features.slots}
        item_table = tables[slot_table[init.history_slot]]
        history, hoff = batch.slot(init.history_slot)
        means: dict[int, npt.NDArray[np.float32]] = {}
        for slot in (s for s, t in slot_table.items() if t == table.name):
            users, uoff = batch.slot(slot)
            if np.diff(uoff).max(initial=0) > 1:
                continue  # a multi-valued slot of this table is not a user id
            present = np.diff(uoff) == 1
            idx = np.flatnonzero(present)
            starts, ends = hoff[:-1][idx], hoff[1:][idx]
            keep = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)]
                                  ) if idx.shape[0] else np.empty(0, np.int64)
            lengths = (ends - starts).astype(np.int64)
            off = np.zeros(idx.shape[0] + 1, np.int64)
            np.cumsum(lengths, out=off[1:])
            means.update(history_means(users[uoff[:-1][idx]], history[keep.astype(np.int64)],
                                       off, item_table))
        table.expect_new_rows(means)
