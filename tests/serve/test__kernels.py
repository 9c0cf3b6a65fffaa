"""The shared table's numba kernels against their Python references."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.serve import _kernels as K


def _fresh(slots: int, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.full(slots, K.EMPTY, np.int32), np.zeros(rows, np.uint64),
            np.zeros((rows, dim), np.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernels_match_their_references(seed):
    rng = np.random.default_rng(seed)
    a, b = _fresh(256, 100, 3), _fresh(256, 100, 3)
    used_a = used_b = 0
    for step in range(6):  # upserts with repeats, then removals, then upserts again
        fids = rng.integers(0, 2**63, 20, dtype=np.uint64) if step % 2 == 0 else \
            a[1][rng.integers(0, max(1, used_a), 10)]
        vals = rng.standard_normal((fids.shape[0], 3)).astype(np.float32)
        used_a = K.upsert(*a, used_a, fids, vals, 100)
        used_b = K.upsert_ref(*b, used_b, fids, vals, 100)
        assert used_a == used_b
        gone = a[1][rng.integers(0, used_a, 5)]
        assert K.remove(a[0], a[1], gone) == K.remove_ref(b[0], b[1], gone)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    probe = np.concatenate([a[1][:used_a], rng.integers(0, 2**63, 30, dtype=np.uint64)])
    ra, rb = np.empty(probe.shape[0], np.int32), np.empty(probe.shape[0], np.int32)
    K.probe(a[0], a[1], probe, ra)
    K.probe_ref(b[0], b[1], probe, rb)
    np.testing.assert_array_equal(ra, rb)
    assert (ra >= 0).any() and (ra == -1).any()
    offsets = np.array([0, 3, 3, 10, probe.shape[0]], np.int64)
    scale = np.array([1.0, 1.0, 0.5, 2.0], np.float32)
    default = np.arange(3, dtype=np.float32)
    pa, pb = np.empty((4, 3), np.float32), np.empty((4, 3), np.float32)
    K.pool(a[2], ra, offsets, scale, default, pa)
    K.pool_ref(b[2], rb, offsets, scale, default, pb)
    np.testing.assert_allclose(pa, pb, rtol=1e-6)


def test_upsert_stops_at_max_used():
    index, keys, emb = _fresh(64, 8, 2)
    fids = np.arange(1, 11, dtype=np.uint64)
    assert K.upsert(index, keys, emb, 0, fids, np.ones((10, 2), np.float32), 8) == -1
