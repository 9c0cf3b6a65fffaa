"""The fused training lookup (``find_or_insert``) of tables that admit every fid."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.table import (
    AdmissionConfig,
    EmbeddingTable,
    InitializerConfig,
    OptimizerConfig,
    TableConfig,
)


def _cfg(**kw) -> TableConfig:
    base = dict(name="t", dim=3, capacity_hint=16, ttl_s=5,
                initializer=InitializerConfig(kind="normal", std=0.5, seed=7),
                optimizer=OptimizerConfig(kind="adagrad", lr=0.1, initial_accumulator=0.25))
    base.update(kw)
    return TableConfig(**base)


@pytest.mark.parametrize("max_load", [0.5, 0.9])
def test_matches_a_dict_model_through_growth_duplicates_and_expiry(max_load):
    rng = np.random.default_rng(1)
    t = EmbeddingTable(_cfg(max_load=max_load))
    init = EmbeddingTable(_cfg(max_load=max_load))  # rows a fid gets when first inserted
    model: dict[int, int] = {}  # fid -> last_seen
    for now in range(40):
        fids = rng.integers(0, 3000, size=int(rng.integers(1, 600))).astype(np.uint64)
        fids = np.concatenate([fids, fids[:50]])  # duplicates within the batch
        known = {int(f) for f in fids if int(f) in model}
        rows = t.resolve(fids, now=now, train=True)
        # same fid -> same row, distinct fids -> distinct rows, every row valid
        assert (rows >= 0).all()
        pairs = dict(zip(fids.tolist(), rows.tolist(), strict=True))
        assert len(set(pairs.values())) == len(pairs)
        np.testing.assert_array_equal(t.find(fids), rows)
        new = np.array(sorted({int(f) for f in fids} - known), np.uint64)
        if new.shape[0]:  # new rows hold their deterministic initial values and state
            np.testing.assert_array_equal(t.lookup(new), init.lookup(new, now=0, train=True))
            assert (t.read_rows(new).states == 0.25).all()
        for f in fids.tolist():
            model[f] = now
        s = t.stats()
        assert s.entries == len(model)
        assert s.entries + s.tombstones <= max_load * s.index_slots
        assert (t.read_rows(fids).last_seen == now).all()
        if now % 7 == 6:
            gone = t.expire(now)
            stale = [f for f, seen in model.items() if seen < now - 5]
            assert gone == len(stale)
            for f in stale:
                del model[f]
    alive = np.array(sorted(model), np.uint64)
    assert (t.find(alive) >= 0).all()
    assert t.stats().admitted >= len(model)


def test_same_rows_as_the_admission_path():
    """Contents agree with the sketch-admission path when that path admits everything."""
    rng = np.random.default_rng(3)
    fast = EmbeddingTable(_cfg())
    slow = EmbeddingTable(_cfg(admission=AdmissionConfig(min_count=1, probability=0.999999999)))
    for now in range(10):
        fids = rng.integers(0, 500, size=300).astype(np.uint64)
        fast.resolve(fids, now=now, train=True)
        slow.resolve(fids, now=now, train=True)
        g = rng.standard_normal((fids.shape[0], 3)).astype(np.float32)
        fast.apply_gradients(fids, g)
        slow.apply_gradients(fids, g)
    probe = np.arange(500, dtype=np.uint64)
    np.testing.assert_array_equal(fast.find(probe) >= 0, slow.find(probe) >= 0)
    np.testing.assert_allclose(fast.lookup(probe), slow.lookup(probe), rtol=1e-6)
    assert len(fast) == len(slow)


def test_version_stamp_only_when_last_seen_changes():
    t = EmbeddingTable(_cfg())
    f = np.array([1, 2], np.uint64)
    t.resolve(f, now=3, train=True)
    assert t.seal_version() == 1
    t.resolve(f, now=3, train=True)
    assert t.read_rows(f).versions.tolist() == [1, 1]
    t.resolve(f, now=4, train=True)
    assert t.read_rows(f).versions.tolist() == [2, 2]


def test_resolve_unique_equals_a_probe_per_occurrence_and_unique_rows():
    """Deduplicating the batch first changes nothing: the same rows (numbers included),
    contents, stamps and counters as probing every occurrence, through growth and expiry."""
    rng = np.random.default_rng(5)
    dedup, every = EmbeddingTable(_cfg()), EmbeddingTable(_cfg())
    for now in range(30):
        fids = rng.zipf(1.3, size=int(rng.integers(1, 700))).astype(np.uint64)
        rows, (urows, inverse) = dedup.resolve_unique(fids, now=now)
        want = every._find_or_insert(fids, np.uint32(now))  # the kernel on every occurrence
        want_u, want_inv = EmbeddingTable.unique_rows(want)
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_array_equal(urows, want_u)
        np.testing.assert_array_equal(inverse, want_inv)
        assert (urows[inverse] == rows).all()
        if now % 9 == 8:
            assert dedup.expire(now) == every.expire(now)
        if now % 5 == 4:
            assert dedup.seal_version() == every.seal_version()
    a, b = dedup.read_rows(), every.read_rows()
    for field in ("fids", "values", "states", "last_seen", "versions"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert dedup.stats().tombstones == every.stats().tombstones
    assert dedup.stats().capacity == every.stats().capacity
    assert dedup.stats().index_slots == every.stats().index_slots


def test_resolve_unique_of_an_admission_table_is_resolve_and_unique_rows():
    cfg = _cfg(admission=AdmissionConfig(min_count=2))
    t, ref = EmbeddingTable(cfg), EmbeddingTable(cfg)
    fids = np.array([4, 4, 9, 4, 9, 1], np.uint64)
    for now in range(3):
        rows, (urows, inverse) = t.resolve_unique(fids, now=now)
        want = ref.resolve(fids, now=now, train=True)
        np.testing.assert_array_equal(rows, want)
        for got, exp in zip((urows, inverse), EmbeddingTable.unique_rows(want), strict=True):
            np.testing.assert_array_equal(got, exp)
        if now == 0:  # fid 1 seen once so far: not admitted, no row and no unique entry
            assert (rows[:5] >= 0).all() and rows[5] == -1 and inverse[5] == -1
