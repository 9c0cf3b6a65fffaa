"""EmbeddingTable against a plain-dict model: lookups, admission, SGD, expiry, deltas, snapshots."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from freshrec.errors import InputError
from freshrec.table import (
    AdmissionConfig,
    EmbeddingTable,
    InitializerConfig,
    OptimizerConfig,
    TableConfig,
)
from tests.table._reference import (
    ADVERSARIAL_FIDS,
    DictTable,
    assert_same_state,
    assert_tables_equal,
    dump,
    initial_rows,
    u64,
)

DIM = 3
TTL = 20
POOL = ADVERSARIAL_FIDS[:12] + [10, 11, 12, 13]
batches = st.lists(st.sampled_from(POOL), min_size=0, max_size=10)
grad_values = st.sampled_from([-1.0, -0.5, 0.0, 0.25, 1.0, 2.0])


class TableMachine(RuleBasedStateMachine):
    """Random interleavings on a table, its model and a replica fed by deltas."""

    @initialize(min_count=st.sampled_from([1, 2, 3]), default=st.sampled_from([0.0, 7.0]),
                init=st.sampled_from(["zeros", "uniform", "normal"]))
    def setup(self, min_count: int, default: float, init: str) -> None:
        self.config = TableConfig(
            name="t", dim=DIM, ttl_s=TTL, capacity_hint=4, max_load=0.9,
            initializer=InitializerConfig(kind=init, scale=0.5, std=0.5, seed=11),
            optimizer=OptimizerConfig(kind="sgd", lr=0.25, weight_decay=0.5),
            admission=AdmissionConfig(min_count=min_count, sketch_width=1 << 12, seed=5),
        )
        self.table = EmbeddingTable(self.config)
        self.model = DictTable(self.config)
        self.table.set_default_row(np.full(DIM, default, np.float32))
        self.model.default = np.full(DIM, default, np.float32)
        self.replica = EmbeddingTable(self.config)
        self.synced = 0
        self.now = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="freshrec-test-"))

    def teardown(self) -> None:
        if hasattr(self, "tmp"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(fids=batches, dt=st.integers(0, 8))
    def train_lookup(self, fids: list[int], dt: int) -> None:
        self.now += dt
        got = self.table.lookup(u64(fids), now=self.now, train=True)
        want = self.model.lookup(fids, now=self.now, train=True)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

    @rule(fids=batches)
    def read_lookup(self, fids: list[int]) -> None:
        got = self.table.lookup(u64(fids))
        np.testing.assert_allclose(got, self.model.lookup(fids), rtol=1e-6, atol=1e-7)

    @rule(fids=batches, data=st.data())
    def gradients(self, fids: list[int], data: st.DataObject) -> None:
        vals = data.draw(st.lists(grad_values, min_size=len(fids) * DIM,
                                  max_size=len(fids) * DIM))
        grads = np.array(vals, np.float32).reshape(len(fids), DIM)
        assert self.table.apply_gradients(u64(fids), grads) == self.model.apply_gradients(
            fids, grads)

    @rule(dt=st.integers(0, 30))
    def expire(self, dt: int) -> None:
        self.now += dt
        assert self.table.expire(self.now) == self.model.expire(self.now)

    @rule()
    def sync_replica(self) -> None:
        delta = self.table.export_delta(self.synced)
        self.replica.apply_delta(delta, chunk_rows=3)
        self.synced = delta.to_version
        assert_same_state(self.replica, self.model)
        assert_tables_equal(self.replica, self.table)

    @rule(into_existing=st.booleans())
    def save_load(self, into_existing: bool) -> None:
        path = self.tmp / "snap"
        self.table.save(path)
        if into_existing:
            self.table.load(path)
        else:
            loaded = EmbeddingTable.from_snapshot(path)
            assert loaded.config == self.config
            self.table = loaded

    @precondition(lambda self: len(self.model.rows) > 0)
    @rule()
    def rejected_fids_untouched(self) -> None:
        absent = [f for f in POOL if f not in self.model.rows]
        grads = np.ones((len(absent), DIM), np.float32)
        assert self.table.apply_gradients(u64(absent), grads) == 0
        assert (self.table.find(u64(absent)) == -1).all()

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "table"):
            assert_same_state(self.table, self.model)


TestTableMachine = TableMachine.TestCase
TestTableMachine.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------- admission
@pytest.mark.parametrize("min_count", [2, 3, 5])
def test_admitted_exactly_at_min_count_th_occurrence(min_count):
    cfg = TableConfig(name="t", dim=4, optimizer=OptimizerConfig(kind="sgd", lr=1.0),
                      initializer=InitializerConfig(kind="uniform", scale=1.0, seed=2),
                      admission=AdmissionConfig(min_count=min_count, sketch_width=1 << 14))
    t = EmbeddingTable(cfg)
    t.set_default_row(np.full(4, -9.0, np.float32))
    fids = u64(ADVERSARIAL_FIDS)
    init = initial_rows(cfg, ADVERSARIAL_FIDS)
    for k in range(1, min_count):
        rows = t.lookup(fids, now=k, train=True)
        np.testing.assert_array_equal(rows, -9.0)
        assert len(t) == 0
        assert t.apply_gradients(fids, np.ones((len(fids), 4), np.float32)) == 0
        np.testing.assert_array_equal(t.lookup(fids), -9.0)
    st_ = t.stats()
    assert (st_.admitted, st_.rejected) == (0, (min_count - 1) * len(fids))
    rows = t.lookup(fids, now=min_count, train=True)
    np.testing.assert_array_equal(rows, init)
    assert len(t) == len(fids) and t.stats().admitted == len(fids)


def test_admission_counts_duplicates_within_a_batch():
    cfg = TableConfig(name="t", dim=2, admission=AdmissionConfig(min_count=3,
                                                                   sketch_width=1 << 10))
    t = EmbeddingTable(cfg)
    t.lookup(u64([5, 5, 6]), now=1, train=True)
    assert len(t) == 0
    t.lookup(u64([5, 6]), now=2, train=True)
    assert (t.find(u64([5, 6])) >= 0).tolist() == [True, False]


def test_admission_probability_admits_some_but_not_all():
    cfg = TableConfig(name="t", dim=2, admission=AdmissionConfig(probability=0.25, seed=1))
    t = EmbeddingTable(cfg)
    fids = np.arange(1, 4001, dtype=np.uint64)
    t.lookup(fids, now=1, train=True)
    assert 800 < len(t) < 1200
    again = EmbeddingTable(cfg)
    again.lookup(fids, now=1, train=True)
    np.testing.assert_array_equal(t.find(fids) >= 0, again.find(fids) >= 0)


# ---------------------------------------------------------------------------- collisionless
@pytest.mark.parametrize("max_load", [0.5, 0.7, 0.9])
def test_collisionless_with_adversarial_keys_through_growth(max_load):
    cfg = TableConfig(name="t", dim=2, capacity_hint=16, max_load=max_load,
                      initializer=InitializerConfig(kind="zeros"),
                      optimizer=OptimizerConfig(kind="sgd", lr=1.0))
    t = EmbeddingTable(cfg)
    low_bits = [k << 40 for k in range(3000)]
    high = [2**64 - 1 - k for k in range(500)] + [2**63 + k for k in range(500)]
    consecutive = list(range(5000, 8000))
    fids = np.array(list(dict.fromkeys(ADVERSARIAL_FIDS + low_bits + high + consecutive)),
                    np.uint64)
    # Each fid's row is [its position, -its position]: any shared row would show.
    pos = np.arange(1, fids.shape[0] + 1, dtype=np.float32)
    slots_seen = set()
    for start in range(0, fids.shape[0], 97):
        part, p = fids[start:start + 97], pos[start:start + 97]
        t.lookup(part, now=1, train=True)
        t.apply_gradients(part, -np.stack([p, -p], axis=1))
        s = t.stats()
        assert s.entries == start + part.shape[0]
        assert s.entries + s.tombstones <= max_load * s.index_slots
        slots_seen.add(s.index_slots)
    assert len(slots_seen) >= 3, "expected several growths"
    rows = t.find(fids)
    assert (rows >= 0).all() and np.unique(rows).shape[0] == fids.shape[0]
    np.testing.assert_array_equal(t.lookup(fids), np.stack([pos, -pos], axis=1))
    assert (t.find(u64([4, 2**64 - 1001, 3000 << 40])) == -1).all()


def test_fill_to_just_under_max_load_stays_correct():
    cfg = TableConfig(name="t", dim=1, capacity_hint=700, max_load=0.7,
                      initializer=InitializerConfig(kind="zeros"),
                      optimizer=OptimizerConfig(kind="sgd", lr=1.0))
    t = EmbeddingTable(cfg)
    slots = t.stats().index_slots
    n = int(0.7 * slots) - 1
    fids = np.array([k << 40 for k in range(n)], np.uint64)
    for start in range(0, n, 97):       # many small batches, one fid at a time at the end
        t.lookup(fids[start:start + 97], now=1, train=True)
    s = t.stats()
    assert s.entries == n and s.index_slots == slots and s.load_factor > 0.69
    t.apply_gradients(fids, -np.arange(n, dtype=np.float32)[:, None])
    np.testing.assert_array_equal(t.lookup(fids)[:, 0], np.arange(n, dtype=np.float32))


def test_expiry_churn_keeps_capacity_bounded_and_cleans_tombstones():
    cfg = TableConfig(name="t", dim=4, ttl_s=1, capacity_hint=16,
                      initializer=InitializerConfig(kind="zeros"),
                      optimizer=OptimizerConfig(kind="sgd", lr=1.0))
    t = EmbeddingTable(cfg)
    model = DictTable(cfg)
    per_round = 1000
    caps, slots = [], []
    for r in range(30):
        now = 10 * r
        fids = [(r * per_round + k) << 40 for k in range(per_round)]
        t.lookup(u64(fids), now=now, train=True)
        model.lookup(fids, now=now, train=True)
        grads = np.full((per_round, 4), -float(r), np.float32)
        t.apply_gradients(u64(fids), grads)
        model.apply_gradients(fids, grads)
        s = t.stats()
        caps.append(s.capacity)
        slots.append(s.index_slots)
        assert s.entries == per_round
        assert s.entries + s.tombstones <= cfg.max_load * s.index_slots
        assert t.expire(now + 5) == model.expire(now + 5) == per_round
        assert len(t) == 0
    assert max(caps) == caps[1] and max(caps) < 3 * per_round
    assert max(slots) == slots[1]
    assert t.stats().expired == 30 * per_round
    assert_same_state(t, model, exact=True)
    # Rows are reused, and old fids are really gone.
    assert (t.find(u64([k << 40 for k in range(per_round)])) == -1).all()


def test_expired_fid_comes_back_with_its_initial_row():
    cfg = TableConfig(name="t", dim=3, ttl_s=5,
                      initializer=InitializerConfig(kind="normal", std=1.0, seed=4),
                      optimizer=OptimizerConfig(kind="adagrad", lr=0.5))
    t = EmbeddingTable(cfg)
    first = t.lookup(u64([42]), now=0, train=True)
    t.apply_gradients(u64([42]), np.ones((1, 3), np.float32))
    assert not np.array_equal(t.lookup(u64([42])), first)
    t.lookup(u64([43]), now=10, train=True)
    assert t.expire(10) == 1
    np.testing.assert_array_equal(t.lookup(u64([42]), now=11, train=True), first)
    # The reused row's optimizer state was reset too: one step equals a fresh table's step.
    fresh = EmbeddingTable(cfg)
    fresh.lookup(u64([42]), now=0, train=True)
    for tab in (t, fresh):
        tab.apply_gradients(u64([42]), np.ones((1, 3), np.float32))
    np.testing.assert_array_equal(t.lookup(u64([42])), fresh.lookup(u64([42])))


def test_ttl_boundary_and_no_ttl():
    t = EmbeddingTable(TableConfig(name="t", dim=1, ttl_s=10))
    t.lookup(u64([1]), now=100, train=True)
    assert t.expire(110) == 0        # idle exactly ttl: kept
    assert t.expire(111) == 1
    forever = EmbeddingTable(TableConfig(name="t", dim=1))
    forever.lookup(u64([1]), now=0, train=True)
    assert forever.expire(2**32 - 1) == 0 and len(forever) == 1


def test_read_lookup_does_not_refresh_last_seen_or_insert():
    t = EmbeddingTable(TableConfig(name="t", dim=1, ttl_s=10))
    t.lookup(u64([1]), now=0, train=True)
    t.lookup(u64([1, 2]), now=50)
    assert dump(t)[1][1] == 0 and len(t) == 1
    assert t.expire(50) == 1


def test_read_rows_reads_without_changing_the_table():
    t = EmbeddingTable(TableConfig(name="t", dim=2, optimizer=OptimizerConfig(kind="adagrad")))
    t.lookup(u64([30, 10, 20]), now=7, train=True)
    t.seal_version()
    t.lookup(u64([20]), now=9, train=True)
    before = (t.version, len(t), t.stats())
    every = t.read_rows()
    assert every.fids.tolist() == [10, 20, 30]                    # sorted by fid
    assert every.last_seen.tolist() == [7, 9, 7] and every.versions.tolist() == [1, 2, 1]
    np.testing.assert_array_equal(every.values, t.lookup(u64([10, 20, 30])))
    assert every.states is not None and every.states.shape == (3, t.config.state_dim)
    some = t.read_rows([20, 10], with_state=False)
    assert some.fids.tolist() == [20, 10] and some.states is None
    with pytest.raises(InputError, match="1 of 2 have none \\(the first: 99\\)"):
        t.read_rows([10, 99])
    assert (t.version, len(t), t.stats()) == before
    every.values[:] = 5                                             # a copy, not a view
    assert not (t.lookup(u64([10])) == 5).any()


def test_accepts_torch_and_lists_and_signed_ints():
    torch = pytest.importorskip("torch")
    t = EmbeddingTable(TableConfig(name="t", dim=2,
                                   initializer=InitializerConfig(kind="uniform", seed=1)))
    a = t.lookup(torch.tensor([3, 4], dtype=torch.int64), now=0, train=True)
    np.testing.assert_array_equal(a, t.lookup([3, 4]))
    np.testing.assert_array_equal(a, t.lookup(np.array([3, 4], np.int32)))
    assert t.lookup(np.empty(0, np.uint64), now=0, train=True).shape == (0, 2)


# ---------------------------------------------------------------------------- initializer
_INIT_SCRIPT = """
import numpy as np
from freshrec.table import EmbeddingTable, InitializerConfig, TableConfig
fids = np.array([0, 1, 2**63, 2**64 - 1, 12345 << 40], np.uint64)
for kind in ("uniform", "normal"):
    t = EmbeddingTable(TableConfig(name="t", dim=5,
                                   initializer=InitializerConfig(kind=kind, seed=99)))
    print(t.lookup(fids, now=0, train=True).tobytes().hex())
"""


def test_initializer_same_rows_in_another_process():
    out = subprocess.run([sys.executable, "-c", _INIT_SCRIPT], capture_output=True, text=True,
                         check=True, timeout=120)
    fids = u64([0, 1, 2**63, 2**64 - 1, 12345 << 40])
    lines = out.stdout.split()
    for kind, line in zip(("uniform", "normal"), lines, strict=True):
        cfg = TableConfig(name="t", dim=5, initializer=InitializerConfig(kind=kind, seed=99))
        assert initial_rows(cfg, fids.tolist()).tobytes().hex() == line


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_initializer_is_per_fid_and_seeded(kind):
    def cfg(seed: int, hint: int = 1024) -> TableConfig:
        return TableConfig(name="t", dim=8, capacity_hint=hint,
                           initializer=InitializerConfig(kind=kind, seed=seed))
    fids = list(range(100))
    a = initial_rows(cfg(1), fids)
    # Another table, other insertion order and batching, other capacity: same rows per fid.
    t = EmbeddingTable(cfg(1, hint=16))
    for part in (fids[::-1][:37], fids[50:], fids):
        t.lookup(u64(part), now=0, train=True)
    np.testing.assert_array_equal(t.lookup(u64(fids)), a)
    b = initial_rows(cfg(2), fids)
    assert not np.isclose(a, b).any()
    assert np.unique(a, axis=0).shape[0] == len(fids)      # different fids differ


def test_initializer_distributions():
    fids = np.arange(20_000, dtype=np.uint64) << np.uint64(20)
    normal = initial_rows(TableConfig(name="t", dim=8, initializer=InitializerConfig(
        kind="normal", std=0.3, seed=7)), fids.tolist())
    assert abs(normal.mean()) < 0.01
    assert abs(normal.std() - 0.3) < 0.01
    assert abs(np.mean(np.abs(normal) < 0.3) - 0.6827) < 0.01
    scale = np.float32(0.05)
    uni = initial_rows(TableConfig(name="t", dim=8, initializer=InitializerConfig(
        kind="uniform", scale=0.05, seed=7)), fids.tolist())
    assert uni.min() >= -scale and uni.max() < scale
    assert uni.min() < -0.049 and uni.max() > 0.049
    assert abs(uni.std() - 0.05 / np.sqrt(3)) < 0.001
    zeros = initial_rows(TableConfig(name="t", dim=8, initializer=InitializerConfig(
        kind="zeros")), fids[:100].tolist())
    assert not zeros.any()


# ---------------------------------------------------------------------------- stats
def test_stats_counters():
    cfg = TableConfig(name="t", dim=16, ttl_s=5,
                      optimizer=OptimizerConfig(kind="rowwise_adagrad"),
                      admission=AdmissionConfig(min_count=2, sketch_width=1 << 10))
    t = EmbeddingTable(cfg)
    t.lookup(u64([1, 2, 3]), now=0, train=True)
    t.lookup(u64([1, 2]), now=0, train=True)
    t.apply_gradients(u64([1, 2]), np.array([[np.nan] * 16, [1.0] * 16], np.float32))
    t.lookup(u64([2]), now=10, train=True)
    assert t.expire(10) == 1
    s = t.stats()
    assert (s.entries, s.admitted, s.rejected, s.expired, s.nonfinite) == (1, 2, 3, 1, 1)
    assert s.load_factor == pytest.approx(1 / s.index_slots)
    assert s.bytes_used >= s.capacity * (16 * 4 + 4 + 8 + 4 + 4) + 4 * s.index_slots
    assert repr(t) == "EmbeddingTable(name='t', dim=16, entries=1)"


# ---------------------------------------------------------------------------- bad input
def _bad_input_table() -> EmbeddingTable:
    t = EmbeddingTable(TableConfig(name="bad", dim=3, ttl_s=5,
                                   initializer=InitializerConfig(kind="uniform", seed=1)))
    t.lookup(u64([1, 2, 3]), now=10, train=True)
    return t


def _assert_unchanged(t: EmbeddingTable, before: dict, stats_before) -> None:
    after = dump(t)
    assert after.keys() == before.keys()
    for fid, (row, seen) in before.items():
        np.testing.assert_array_equal(after[fid][0], row)
        assert after[fid][1] == seen
    s = t.stats()
    assert (s.entries, s.admitted, s.rejected, s.nonfinite) == (
        stats_before.entries, stats_before.admitted, stats_before.rejected,
        stats_before.nonfinite)


BAD_FIDS = [
    (np.array([1.0, 2.0]), "got dtype float64"),
    (np.array([True, False]), "got dtype bool"),
    ([1.5, 2], "got 1.5 at 0"),
    ([True], "got True at 0"),
    ([1, -2], "got -2 at 1"),
    ([2**64], "got 18446744073709551616 at 0"),
    (np.array([[1, 2]], np.uint64), r"1-d array of ids, got shape \(1, 2\)"),
    (np.uint64(3), r"got shape \(\)"),
    (np.array([4, -1, 5], np.int64), "non-negative, got -1 at position 1"),
    (np.array(["a"]), "got dtype <U1"),
]


@pytest.mark.parametrize(("fids", "match"), BAD_FIDS)
def test_bad_fids_are_refused_everywhere(fids, match):
    t = _bad_input_table()
    before, stats_before = dump(t), t.stats()
    calls = [lambda: t.lookup(fids), lambda: t.lookup(fids, now=11, train=True),
             lambda: t.find(fids), lambda: t.apply_gradients(fids, np.zeros((2, 3), np.float32))]
    for call in calls:
        with pytest.raises(InputError, match=match):
            call()
    _assert_unchanged(t, before, stats_before)


def test_bad_fids_from_torch():
    torch = pytest.importorskip("torch")
    t = _bad_input_table()
    with pytest.raises(InputError, match="dtype float32"):
        t.lookup(torch.tensor([1.0, 2.0]))
    with pytest.raises(InputError, match="got -3"):
        t.lookup(torch.tensor([-3]), now=11, train=True)


BAD_GRADS = [
    (np.zeros((2, 4), np.float32), r"grads must have shape \(2, 3\), got \(2, 4\)"),
    (np.zeros((3, 3), np.float32), r"grads must have shape \(2, 3\), got \(3, 3\)"),
    (np.zeros(6, np.float32), r"got \(6,\)"),
    (np.zeros((2, 3, 1), np.float32), r"got \(2, 3, 1\)"),
    (np.zeros((2, 3), np.int64), "grads must be a float array, got dtype int64"),
    (np.zeros((2, 3), np.bool_), "got dtype bool"),
]


@pytest.mark.parametrize(("grads", "match"), BAD_GRADS)
def test_bad_gradients_are_refused(grads, match):
    t = _bad_input_table()
    before, stats_before = dump(t), t.stats()
    with pytest.raises(InputError, match=r"EmbeddingTable 'bad'\.apply_gradients: .*" + match):
        t.apply_gradients(u64([1, 2]), grads)
    _assert_unchanged(t, before, stats_before)


@pytest.mark.parametrize("now", [None, -1, 2**32, 1.5, True, "10", np.float64(3)])
def test_bad_now_is_refused(now):
    t = _bad_input_table()
    before, stats_before = dump(t), t.stats()
    with pytest.raises(InputError, match=r"lookup\(train=True\): now must be an int"):
        t.lookup(u64([1, 4]), now=now, train=True)
    if now is not None:
        with pytest.raises(InputError, match=r"\.expire: now must be an int"):
            t.expire(now)
        with pytest.raises(InputError, match="apply_gradients: now must be"):
            t.apply_gradients(u64([1]), np.ones((1, 3), np.float32), now=now)
    _assert_unchanged(t, before, stats_before)


def test_numpy_int_now_is_accepted():
    t = _bad_input_table()
    t.lookup(u64([1]), now=np.int64(12), train=True)
    assert dump(t)[1][1] == 12
    assert t.expire(np.uint32(16)) == 2


def test_bad_default_row_is_refused():
    t = _bad_input_table()
    with pytest.raises(InputError, match=r"default row must have shape \(3,\), got \(4,\)"):
        t.set_default_row(np.zeros(4))
    np.testing.assert_array_equal(t.lookup(u64([99])), [[0, 0, 0]])


def test_pool_into_a_strided_view_and_refuses_a_wrong_out():
    t = EmbeddingTable(TableConfig(name="t", dim=3))
    rows = t.resolve(np.array([5, 6, 5, 7], np.uint64), now=1, train=True)
    offsets, scale = np.array([0, 1, 3, 4]), np.array([1.0, 0.5, 1.0], np.float32)
    out = np.zeros((3, 2, 3), np.float32)
    assert t.pool(rows, offsets, scale, out=out[:, 1, :]) is not None
    np.testing.assert_array_equal(out[:, 1, :], t.pool(rows, offsets, scale))
    assert not out[:, 0, :].any()
    with pytest.raises(InputError, match="out must be float32"):
        t.pool(rows, offsets, scale, out=np.zeros((3, 2), np.float32))
