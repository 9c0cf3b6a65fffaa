"""numba kernels against plain-Python references."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.table import _kernels as K
from tests.table._reference import ADVERSARIAL_FIDS, u64

fid_pool = st.sampled_from(ADVERSARIAL_FIDS + list(range(20, 40)))


class IndexModel:
    """The kernels' index, rows and free stack driven like the table does, next to a dict."""

    def __init__(self, slots: int, rows: int) -> None:
        self.index = np.full(slots, K.EMPTY, np.int64)
        self.keys = np.zeros(rows, np.uint64)
        self.touched = np.zeros(rows, np.uint32)
        self.last_seen = np.zeros(rows, np.uint32)
        self.free = np.zeros(rows, np.int32)
        self.n_free = self.n_used = self.tombstones = 0
        self.ref: dict[int, int] = {}

    def insert(self, fids: list[int]) -> None:
        new = u64(sorted(set(fids) - set(self.ref)))
        out = np.empty(new.shape[0], np.int32)
        self.n_free, self.n_used, reused = K.insert_new(
            self.index, self.keys, self.touched, self.last_seen, self.free, self.n_free,
            self.n_used, new, np.uint32(3), np.uint32(7), out)
        self.tombstones -= reused
        assert self.tombstones >= 0
        for f, r in zip(new.tolist(), out.tolist(), strict=True):
            assert r not in self.ref.values()
            self.ref[f] = r

    def remove(self, fids: list[int]) -> None:
        gone = sorted(set(fids) & set(self.ref))
        rows = np.array([self.ref.pop(f) for f in gone], np.int32)
        self.n_free = K.remove_rows(self.index, self.keys, self.touched, self.free,
                                    self.n_free, rows)
        self.tombstones += len(gone)

    def check(self) -> None:
        fids = u64(ADVERSARIAL_FIDS + list(range(20, 40)))
        out = np.empty(fids.shape[0], np.int32)
        missing = K.find_rows(self.index, self.keys, fids, out)
        want = [self.ref.get(f, -1) for f in fids.tolist()]
        assert out.tolist() == want
        assert missing == want.count(-1)
        assert (self.index >= 0).sum() == len(self.ref)
        assert (self.index == K.TOMBSTONE).sum() == self.tombstones
        assert self.n_used - self.n_free == len(self.ref)
        # A rebuild from the rows alone gives an index that finds the same rows.
        fresh = np.full(self.index.shape[0], K.EMPTY, np.int64)
        assert K.build_index(self.keys, self.touched, self.n_used, fresh) == len(self.ref)
        K.find_rows(fresh, self.keys, fids, out)
        assert out.tolist() == want


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(fid_pool, max_size=8)), max_size=25))
def test_insert_find_remove_match_a_dict(ops):
    m = IndexModel(slots=512, rows=64)      # <= 200 inserts: some slot always stays empty
    for is_insert, fids in ops:
        if is_insert:
            m.insert(fids)
        else:
            m.remove(fids)
        m.check()


def test_index_at_high_fill_with_same_low_bits():
    m = IndexModel(slots=1024, rows=1024)
    fids = [k << 40 for k in range(900)]
    m.insert(fids)
    m.remove(fids[::2])
    m.insert([(k << 40) + 1 for k in range(400)])
    ref = dict(m.ref)
    out = np.empty(len(ref), np.int32)
    assert K.find_rows(m.index, m.keys, u64(ref), out) == 0
    assert out.tolist() == list(ref.values())


def test_mix64_is_bijective_on_adversarial_keys():
    keys = [k << s for s in (0, 20, 40, 60) for k in range(1, 300)] + ADVERSARIAL_FIDS
    keys = sorted(set(k % 2**64 for k in keys))
    mixed = {int(K.mix64(np.uint64(k))) for k in keys}
    assert len(mixed) == len(keys)
    lows = [int(K.mix64(np.uint64(k << 40))) & 1023 for k in range(2000)]
    assert max(np.bincount(lows, minlength=1024)) < 12    # spread, not all in one slot


def test_unit_float_range_and_determinism():
    draws = [K.unit_float(np.uint64(s), np.uint64(f), np.uint64(j))
             for s in (0, 1) for f in (0, 2**64 - 1, 5) for j in range(200)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert len(set(draws)) == len(draws)
    assert K.unit_float(np.uint64(3), np.uint64(4), np.uint64(5)) == K.unit_float(
        np.uint64(3), np.uint64(4), np.uint64(5))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 6), max_size=30), st.integers(1, 4))
def test_sum_by_row_matches_dict(rows, dim):
    rng = np.random.default_rng(len(rows))
    grads = rng.integers(-8, 8, size=(len(rows), dim)).astype(np.float32)
    urows, ugrads = K.sum_by_row(np.array(rows, np.int32), grads)
    ref: dict[int, np.ndarray] = {}
    for r, g in zip(rows, grads, strict=True):
        if r >= 0:
            ref[r] = ref.get(r, np.zeros(dim, np.float32)) + g
    assert urows.tolist() == list(ref)                      # order of first appearance
    np.testing.assert_array_equal(ugrads.reshape(-1, dim),
                                  np.array(list(ref.values()), np.float32).reshape(-1, dim))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 40), max_size=60))
def test_unique_rows_is_first_appearance_order_with_inverse(rows):
    urows, inverse = K.unique_rows(np.array(rows, np.int32))
    assert urows.tolist() == list(dict.fromkeys(r for r in rows if r >= 0))
    assert [int(urows[p]) if p >= 0 else -1 for p in inverse] == [max(r, -1) for r in rows]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-1, 5), max_size=5), min_size=1, max_size=8))
def test_pool_and_bag_gradients_match_python(bags):
    dim = 3
    rng = np.random.default_rng(len(bags))
    emb = rng.integers(-4, 4, size=(6, dim)).astype(np.float32)
    default = np.full(dim, 0.5, np.float32)
    rows = np.array([r for b in bags for r in b], np.int32)
    offsets = np.cumsum([0] + [len(b) for b in bags]).astype(np.int64)
    scale = np.array([1.0 / max(len(b), 1) if i % 2 else 1.0 for i, b in enumerate(bags)],
                     np.float32)
    out = np.empty((len(bags), dim), np.float32)
    K.pool(emb, rows, offsets, scale, default, out)
    grad_out = rng.integers(-3, 3, size=(len(bags), dim)).astype(np.float32)
    urows, inverse = K.unique_rows(rows)
    ugrads = K.sum_bag_grads(inverse, urows.shape[0], offsets, scale, grad_out)
    ref_grads: dict[int, np.ndarray] = {}
    for b, bag in enumerate(bags):
        want = sum((emb[r] if r >= 0 else default for r in bag), np.zeros(dim)) * scale[b]
        np.testing.assert_allclose(out[b], want, rtol=1e-6, atol=1e-5)
        for r in bag:
            if r >= 0:
                ref_grads[r] = ref_grads.get(r, np.zeros(dim)) + grad_out[b] * scale[b]
    assert sorted(urows.tolist()) == sorted(ref_grads)
    for r, g in zip(urows.tolist(), ugrads, strict=True):
        # float32 sums of +-x/3 terms cancel to ~1e-7, hence the absolute tolerance
        np.testing.assert_allclose(g, ref_grads[r], rtol=1e-6, atol=1e-5)


def test_lookup_copy_and_gather():
    index = np.full(32, K.EMPTY, np.int64)
    keys = np.zeros(4, np.uint64)
    touched = np.zeros(4, np.uint32)
    out_rows = np.empty(3, np.int32)
    K.insert_new(index, keys, touched, np.zeros(4, np.uint32), np.zeros(4, np.int32), 0, 0,
                 u64([2**64 - 1, 0, 2**63]), np.uint32(1), np.uint32(0), out_rows)
    emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    default = np.array([-1, -1], np.float32)
    out = np.empty((4, 2), np.float32)
    assert K.lookup_copy(index, keys, emb, u64([0, 5, 2**64 - 1, 2**63]), default, out) == 1
    np.testing.assert_array_equal(out, [emb[out_rows[1]], default, emb[out_rows[0]],
                                        emb[out_rows[2]]])
    K.gather(emb, np.array([3, -1], np.int32), default, out[:2])
    np.testing.assert_array_equal(out[:2], [emb[3], default])


def test_sketch_never_underestimates_and_admits_at_min_count():
    counts = np.zeros((2, 16), np.uint32)            # tiny: collisions guaranteed
    fids = u64(list(range(100)) * 3)
    admit = np.empty(fids.shape[0], np.bool_)
    K.sketch_admit(counts, fids, np.uint64(1), 3, 1.0, admit)
    # Count-min over-estimates only, so every fid is admitted by its third occurrence.
    assert admit[200:].all()
    wide = np.zeros((4, 1 << 12), np.uint32)
    K.sketch_admit(wide, fids, np.uint64(1), 3, 1.0, admit)
    assert not admit[:200].any() and admit[200:].all()


def test_touch_last_seen_marks_changed_rows_only():
    last_seen = np.array([5, 5, 0], np.uint32)
    touched = np.array([1, 1, 1], np.uint32)
    K.touch_last_seen(last_seen, touched, np.array([0, -1, 1, 0], np.int32), np.uint32(5),
                      np.uint32(9))
    assert touched.tolist() == [1, 1, 1]
    K.touch_last_seen(last_seen, touched, np.array([1], np.int32), np.uint32(6), np.uint32(9))
    assert last_seen.tolist() == [5, 6, 0] and touched.tolist() == [1, 9, 1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ADVERSARIAL_FIDS + list(range(4, 12))), max_size=60))
def test_unique_fids_is_first_appearance_order_with_inverse(fids):
    unique, inverse = K.unique_fids(u64(fids))
    assert unique.dtype == np.uint64 and inverse.dtype == np.int32
    assert unique.tolist() == list(dict.fromkeys(fids))
    assert unique[inverse].tolist() == fids
