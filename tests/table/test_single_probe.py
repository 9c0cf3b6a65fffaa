"""The single-probe resolve-or-admit kernel (``find_or_insert``) against a dict model.

Drives the kernel as the table does -- tagged index slots, rows in one 16-byte record per row
(key, version, last-seen as strided views), a free stack fed by removals, a slot budget that
stops it mid-batch -- and checks every result against plain Python: which row each fid gets,
where new rows come from, their initial values and state, the stamps, and the index counts.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.table import _kernels as K
from tests.table._reference import ADVERSARIAL_FIDS, u64

DIM = 3
SLOTS = 256
ROWS = 96
SEED = np.uint64(11)
fid_pool = st.sampled_from(ADVERSARIAL_FIDS + [k << 40 for k in range(9, 30)] + list(range(4, 30)))


class Model:
    """Kernel arrays next to a dict ``fid -> row`` and a Python free stack."""

    def __init__(self) -> None:
        self.index = np.full(SLOTS, K.EMPTY, np.int64)
        meta = np.zeros((ROWS, 2), np.uint64)
        halves = meta.view(np.uint32)
        self.keys, self.touched, self.last_seen = meta[:, 0], halves[:, 2], halves[:, 3]
        self.emb = np.zeros((ROWS, DIM), np.float32)
        self.state = np.zeros((ROWS, 1), np.float32)
        self.free = np.zeros(ROWS, np.int32)
        self.n_free = self.n_used = self.tombstones = 0
        self.ref: dict[int, int] = {}
        self.ref_free: list[int] = []
        self.ref_used = 0

    def resolve(self, fids: list[int], now: int, version: int, budget: int) -> None:
        f = u64(fids)
        out = np.full(f.shape[0], -7, np.int32)
        seen_before = {r: int(self.last_seen[r]) for r in self.ref.values()}
        pos, calls = 0, 0
        while pos < f.shape[0]:  # resume after each stop, as the table does after making room
            pos, self.n_free, self.n_used, reused, _ = K.find_or_insert(
                self.index, self.keys, self.emb, self.state, self.touched, self.last_seen,
                self.free, self.n_free, self.n_used, f, pos, np.uint32(version),
                np.uint32(now), 1, 0.5, 0.0, SEED, 0.25, budget, out)
            self.tombstones -= reused
            calls += 1
            assert calls <= f.shape[0] + 1
        new: list[int] = []
        for i, fid in enumerate(fids):
            if fid not in self.ref:  # the model's row: top of the free stack, else the next
                if self.ref_free:
                    self.ref[fid] = self.ref_free.pop()
                else:
                    self.ref[fid] = self.ref_used
                    self.ref_used += 1
                new.append(fid)
            assert out[i] == self.ref[fid], (i, fid)
        for fid in set(fids):
            r = self.ref[fid]
            assert self.last_seen[r] == now and self.keys[r] == fid
            if fid in new or seen_before[r] != now:
                assert self.touched[r] == version
        if new:
            rows = np.array([self.ref[f] for f in new], np.int32)
            want = np.zeros((len(new), DIM), np.float32)
            K.init_rows(want, np.arange(len(new)), u64(new), 1, 0.5, 0.0, SEED)
            np.testing.assert_array_equal(self.emb[rows], want)
            assert (self.state[rows] == 0.25).all()

    def remove(self, fids: list[int]) -> None:
        gone = sorted(set(fids) & set(self.ref))
        rows = np.array([self.ref.pop(f) for f in gone], np.int32)
        self.n_free = K.remove_rows(self.index, self.keys, self.touched, self.free,
                                    self.n_free, rows)
        self.ref_free.extend(rows.tolist())
        self.tombstones += len(gone)

    def check(self) -> None:
        probe = u64(sorted(set(ADVERSARIAL_FIDS) | set(self.ref) | {12345}))
        out = np.empty(probe.shape[0], np.int32)
        missing = K.find_rows(self.index, self.keys, probe, out)
        want = [self.ref.get(f, -1) for f in probe.tolist()]
        assert out.tolist() == want and missing == want.count(-1)
        copied = np.empty((probe.shape[0], DIM), np.float32)
        default = np.full(DIM, -9.0, np.float32)
        assert K.lookup_copy(self.index, self.keys, self.emb, probe, default, copied) == missing
        np.testing.assert_array_equal(
            copied, [self.emb[r] if r >= 0 else default for r in want])
        assert (self.index >= 0).sum() == len(self.ref)
        assert (self.index == K.TOMBSTONE).sum() == self.tombstones
        assert self.n_used - self.n_free == len(self.ref)
        assert self.n_used == self.ref_used


ops = st.lists(st.tuples(st.booleans(), st.lists(fid_pool, max_size=12), st.integers(0, 5)),
               max_size=20)


@settings(max_examples=80, deadline=None)
@given(ops)
def test_find_or_insert_matches_a_dict(steps):
    m = Model()
    for t, (is_resolve, fids, budget) in enumerate(steps):
        if is_resolve:
            # a small budget stops the kernel before fids needing an EMPTY slot; the loop in
            # Model.resolve resumes it (the table would make room first)
            m.resolve(fids, now=t // 3, version=t + 1, budget=budget or 1000)
        else:
            m.remove(fids)
        m.check()


def test_stops_where_rows_run_out_and_resumes():
    m = Model()
    fids = list(range(1000, 1000 + ROWS + 5))
    f = u64(fids)
    out = np.full(f.shape[0], -7, np.int32)
    pos, n_free, n_used, _, inserted = K.find_or_insert(
        m.index, m.keys, m.emb, m.state, m.touched, m.last_seen, m.free, 0, 0, f, 0,
        np.uint32(1), np.uint32(0), 1, 0.5, 0.0, SEED, 0.25, 10_000, out)
    assert pos == ROWS and n_used == ROWS and inserted == ROWS and n_free == 0
    assert out[:ROWS].tolist() == list(range(ROWS)) and (out[ROWS:] == -7).all()


def test_equal_tags_are_told_apart_by_the_key():
    """Slots whose tags all agree (a tag collision everywhere) still give each fid its row."""
    m = Model()
    fids = [k << 40 for k in range(60)] + [(k << 40) + 1 for k in range(30)]
    m.resolve(fids, now=1, version=1, budget=1000)
    for fid in fids[::7]:
        _, tag = K.slot_of(np.uint64(fid), np.int64(SLOTS - 1))
        forged = m.index.copy()
        forged[forged >= 0] = (forged[forged >= 0] & ~np.int64(0xFFFFFFFF)) | tag
        out = np.empty(len(fids), np.int32)
        K.find_rows(forged, m.keys, u64(fids), out)
        want = [m.ref[f] if K.slot_of(np.uint64(f), np.int64(SLOTS - 1))[1] == tag else -1
                for f in fids]
        assert out.tolist() == want
        assert out[fids.index(fid)] == m.ref[fid]


@settings(max_examples=60, deadline=None)
@given(st.lists(fid_pool, max_size=15), st.lists(fid_pool, max_size=40))
def test_count_absent_is_the_distinct_fids_without_a_row(stored, probe):
    m = Model()
    m.resolve(stored, now=0, version=1, budget=1000)
    assert K.count_absent(m.index, m.keys, u64(probe)) == len(set(probe) - set(stored))
