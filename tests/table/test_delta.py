"""read_delta / seal_version / export_delta / apply_delta: contents, versions, expiry, layouts,
chunking, concurrent reads."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import numpy as np
import pytest

from freshrec.errors import IncompatibleFormatError, InputError, StaleDeltaError
from freshrec.table import (
    EmbeddingTable,
    InitializerConfig,
    OptimizerConfig,
    TableConfig,
    TableDelta,
)
from tests.table._reference import assert_tables_equal, dump, dump_states, u64

CFG = TableConfig(name="t", dim=4, ttl_s=10,
                  initializer=InitializerConfig(kind="normal", std=0.1, seed=1),
                  optimizer=OptimizerConfig(kind="adagrad", lr=0.1, initial_accumulator=0.1))


def _trained(n: int = 50) -> EmbeddingTable:
    t = EmbeddingTable(CFG)
    fids = u64(range(1, n + 1))
    t.lookup(fids, now=0, train=True)
    t.apply_gradients(fids, np.ones((n, 4), np.float32))
    return t


def test_export_since_returns_exactly_rows_written_after():
    t = _trained()
    full = t.export_delta(0)
    assert sorted(full.fids.tolist()) == list(range(1, 51))
    assert full.from_version == 0 and full.states is not None
    since = full.to_version
    assert t.export_delta(since).num_rows == 0       # nothing written since
    since = t.version - 1
    t.apply_gradients(u64([3, 4, 4]), np.ones((3, 4), np.float32))   # updated
    t.lookup(u64([5, 6]), now=0, train=True)          # looked up, same time: not a write
    t.lookup(u64([7]), now=1, train=True)             # last_seen refreshed
    t.lookup(u64([100, 3]), now=1, train=True)        # 100 inserted
    t.apply_gradients(u64([999]), np.ones((1, 4), np.float32))        # absent: no write
    d = t.export_delta(since)
    assert sorted(d.fids.tolist()) == [3, 4, 7, 100]
    assert d.from_version == since and d.to_version == since + 1 == t.version - 1
    rows = dict(zip(d.fids.tolist(), d.values, strict=True))
    np.testing.assert_array_equal(rows[4], t.lookup(u64([4]))[0])
    assert dict(zip(d.fids.tolist(), d.last_seen.tolist(), strict=True)) == {
        3: 1, 4: 0, 7: 1, 100: 1}
    serving = t.export_delta(since, with_state=False)
    assert serving.states is None and sorted(serving.fids.tolist()) == [3, 4, 7, 100]


def test_read_delta_reads_and_seal_version_cuts():
    t = _trained()
    t.expire(20)                                          # fids 1-50 expire in version 1
    t.lookup(u64([60]), now=20, train=True)
    read = t.read_delta(0)
    assert t.version == 1 and t.read_delta(0).to_version == read.to_version == 1
    exported = EmbeddingTable(CFG)
    exported.apply_delta(t.export_delta(0))
    assert t.version == 2                                 # export_delta = read + seal
    assert read.fids.tolist() == [60] and sorted(read.expired.tolist()) == list(range(1, 51))
    assert dump(exported).keys() == {60}
    assert t.seal_version() == 2 and t.version == 3
    assert t.read_delta(1).num_rows == 0                  # nothing written since version 1
    t.lookup(u64([61]), now=21, train=True)
    assert t.read_delta(2).fids.tolist() == [61] and t.read_delta(2).to_version == 3


def test_chain_of_deltas_keeps_replica_equal_including_state():
    src, dst = _trained(), EmbeddingTable(CFG)
    since = 0
    rng = np.random.default_rng(0)
    for step in range(8):
        fids = u64(rng.integers(1, 80, size=30))
        src.lookup(fids, now=step * 4, train=True)
        src.apply_gradients(fids, rng.normal(size=(30, 4)).astype(np.float32))
        src.expire(step * 4)
        d = src.export_delta(since)
        dst.apply_delta(d)
        since = d.to_version
        assert dst.applied_version == since
        assert_tables_equal(src, dst)


def test_expired_fids_are_carried_and_removed_on_apply():
    src, dst = _trained(), EmbeddingTable(CFG)
    dst.apply_delta(src.export_delta(0))
    since = src.version - 1
    src.lookup(u64(range(1, 11)), now=20, train=True)
    assert src.expire(20) == 40
    d = src.export_delta(since)
    assert sorted(d.expired.tolist()) == list(range(11, 51))
    assert sorted(d.fids.tolist()) == list(range(1, 11))
    dst.apply_delta(d)
    assert sorted(dump(dst)) == list(range(1, 11))
    assert_tables_equal(src, dst)


def test_fid_that_expired_and_came_back_is_present_after_apply():
    src, dst = _trained(3), EmbeddingTable(CFG)
    dst.apply_delta(src.export_delta(0))
    since = src.version - 1
    src.expire(100)
    src.lookup(u64([2]), now=101, train=True)
    d = src.export_delta(since)
    assert 2 in d.expired.tolist() and d.fids.tolist() == [2]
    dst.apply_delta(d)
    assert sorted(dump(dst)) == [2]
    assert_tables_equal(src, dst)


def test_gap_and_old_deltas_raise_stale():
    src, dst = _trained(), EmbeddingTable(CFG)
    d1 = src.export_delta(0)
    src.apply_gradients(u64([1]), np.ones((1, 4), np.float32))
    d2 = src.export_delta(d1.to_version)
    src.apply_gradients(u64([2]), np.ones((1, 4), np.float32))
    d3 = src.export_delta(d2.to_version)
    with pytest.raises(StaleDeltaError, match=r"versions \(2, 3\] but this table is at 0"):
        dst.apply_delta(d3)
    assert len(dst) == 0 and dst.applied_version == 0
    dst.apply_delta(d1)
    dst.apply_delta(d2)
    with pytest.raises(StaleDeltaError, match="this table is at 2"):
        dst.apply_delta(d1)                      # old: ends before the applied version
    dst.apply_delta(d3)
    assert_tables_equal(src, dst)


def _shifted(d: TableDelta, from_version: int, to_version: int) -> TableDelta:
    return dataclasses.replace(d, from_version=from_version, to_version=to_version)


def test_unchecked_apply_ignores_versions():
    src, dst = _trained(), EmbeddingTable(CFG)
    d = _shifted(src.export_delta(0), 5, 9)
    dst.apply_delta(d, check_version=False)
    assert dst.applied_version == 9
    assert_tables_equal(src, dst)


@pytest.mark.parametrize("change", [{"dim": 5}, {"name": "other"},
                                    {"optimizer": OptimizerConfig(kind="adam")}])
def test_delta_from_another_layout_is_refused(change):
    src = EmbeddingTable(dataclasses.replace(CFG, **change))
    src.lookup(u64([1, 2]), now=0, train=True)
    dst = _trained(5)
    before = dump(dst)
    with pytest.raises(IncompatibleFormatError, match="layout"):
        dst.apply_delta(src.export_delta(0))
    assert dump(dst).keys() == before.keys() and dst.applied_version == 0


def test_hyper_parameters_may_differ():
    src = _trained(5)
    dst = EmbeddingTable(dataclasses.replace(CFG, optimizer=OptimizerConfig(
        kind="adagrad", lr=0.5), ttl_s=None))
    dst.apply_delta(src.export_delta(0))
    assert_tables_equal(src, dst)


def test_chunked_apply_gives_the_same_result():
    src = _trained(100)
    src.expire(100)
    src.lookup(u64(range(50, 130)), now=100, train=True)
    a, b = EmbeddingTable(CFG), EmbeddingTable(CFG)
    a.lookup(u64(range(0, 60)), now=99, train=True)       # some overlap, some stale rows
    b.lookup(u64(range(0, 60)), now=99, train=True)
    d = src.export_delta(0)
    a.apply_delta(d, chunk_rows=7)
    b.apply_delta(d, chunk_rows=4096)
    assert_tables_equal(a, b)
    assert set(dump(a)) == {0, *range(50, 130)}       # 1-49 expired at the source


def test_serving_delta_resets_state_of_new_rows():
    """A state-less delta gives new rows the initial optimizer state, even in reused rows."""
    src = EmbeddingTable(CFG)
    src.lookup(u64([8]), now=100, train=True)
    dst = EmbeddingTable(CFG)
    dst.lookup(u64([7]), now=0, train=True)
    dst.apply_gradients(u64([7]), np.full((1, 4), 3.0, np.float32))
    assert dst.expire(100) == 1                # row of 7 is free, with its accumulator
    dst.apply_delta(src.export_delta(0, with_state=False))
    np.testing.assert_array_equal(dump_states(dst)[8], np.full(4, 0.1, np.float32))


def test_delta_validates_its_arrays():
    good = dict(table="t", fingerprint="f", from_version=0, to_version=1,
                fids=u64([1, 2]), values=np.zeros((2, 4), np.float32),
                last_seen=np.zeros(2, np.uint32), states=None, expired=u64([]))
    TableDelta(**good)
    bad = [({"fids": np.array([1, 2], np.int64)}, "uint64"),
           ({"values": np.zeros((3, 4), np.float32)}, "values must have shape"),
           ({"values": np.zeros(2, np.float32)}, "values must have shape"),
           ({"last_seen": np.zeros(1, np.uint32)}, "last_seen"),
           ({"states": np.zeros((1, 4), np.float32)}, "states"),
           ({"to_version": -1}, "to_version")]
    for change, msg in bad:
        with pytest.raises(InputError, match=msg):
            TableDelta(**{**good, **change})


# ---------------------------------------------------------------------------- threads
def _constant_delta(fids: np.ndarray, dim: int, version: int) -> TableDelta:
    cfg = TableConfig(name="t", dim=dim)
    return TableDelta(
        table="t", fingerprint=cfg.fingerprint(), from_version=version - 1,
        to_version=version, fids=fids, values=np.full((fids.shape[0], dim), version, np.float32),
        last_seen=np.zeros(fids.shape[0], np.uint32), states=None, expired=u64([]),
    )


def _apply_while_reading(table: EmbeddingTable, deltas: list[TableDelta], chunk_rows: int,
                         read: Callable[[], str | None], readers: int = 1) -> int:
    """Apply ``deltas`` in chunks while ``readers`` threads call ``read`` in a loop.

    ``read`` returns an error message or None; the first error fails the test. Returns how
    many reads began after the first apply began and ended before the last one ended.
    """
    applying, done = threading.Event(), threading.Event()
    during = [0] * readers
    errors: list[str] = []

    def loop(i: int) -> None:
        while not done.is_set() and not errors:
            began = applying.is_set()
            error = read()
            if error is not None:
                errors.append(error)
            elif began and not done.is_set():
                during[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(readers)]
    for th in threads:
        th.start()
    applying.set()
    try:
        for d in deltas:
            table.apply_delta(d, chunk_rows=chunk_rows)
    finally:
        done.set()
        for th in threads:
            th.join(timeout=60)
    assert not errors, errors
    return sum(during)


def test_readers_never_see_half_written_rows():
    dim, n, versions = 64, 20_000, 24
    table = EmbeddingTable(TableConfig(name="t", dim=dim, capacity_hint=16))
    fids = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(2**40 + 1)
    probe = fids[::97]
    deltas = [_constant_delta(fids, dim, v) for v in range(1, versions + 1)]
    last: dict[int, np.ndarray] = {}

    def read() -> str | None:
        rows = table.lookup(probe)
        if not (rows == rows[:, :1]).all():
            return f"torn row: {rows[(rows != rows[:, :1]).any(axis=1)][0]}"
        seen = last.setdefault(threading.get_ident(), np.zeros(probe.shape[0], np.float32))
        if (rows[:, 0] < seen).any():
            return "a row went back to an older version"
        last[threading.get_ident()] = rows[:, 0]
        return None

    assert _apply_while_reading(table, deltas, 50, read, readers=2) >= 10
    np.testing.assert_array_equal(table.lookup(fids), versions)


def test_readers_never_see_a_reused_row_before_it_is_written():
    """Delta v expires the fids of delta v-1 and inserts new ones into their freed rows."""
    dim, n, versions = 32, 5_000, 16
    table = EmbeddingTable(TableConfig(name="t", dim=dim))
    sets = [np.arange(n, dtype=np.uint64) + np.uint64(v * n) for v in range(versions + 1)]
    deltas = [dataclasses.replace(_constant_delta(sets[v], dim, v),
                                  expired=sets[v - 1] if v > 1 else u64([]))
              for v in range(1, versions + 1)]
    probe = np.concatenate([s[::53] for s in sets[1:]])
    owner = np.repeat(np.arange(1, versions + 1), sets[1][::53].shape[0]).astype(np.float32)

    def read() -> str | None:
        rows = table.lookup(probe)
        bad = ~((rows == 0) | (rows == owner[:, None])).all(axis=1)
        return f"fid of version {owner[bad][0]} read {rows[bad][0][:4]}" if bad.any() else None

    assert _apply_while_reading(table, deltas, 64, read) >= 10
    assert len(table) == n and table.stats().capacity < 3 * n


def test_duplicate_fids_in_a_delta_get_one_row():
    cfg = TableConfig(name="t", dim=2)
    t = EmbeddingTable(cfg)
    d = dataclasses.replace(_constant_delta(u64([5, 6, 5]), 2, 1),
                            values=np.array([[1, 1], [2, 2], [3, 3]], np.float32))
    t.apply_delta(d, chunk_rows=2)
    t2 = EmbeddingTable(cfg)
    t2.apply_delta(d)
    for tab in (t, t2):
        assert len(tab) == 2
        assert tab.lookup(u64([5, 6])).tolist() == [[3, 3], [2, 2]]     # last write wins
