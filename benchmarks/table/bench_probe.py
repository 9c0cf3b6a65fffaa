"""Linear probing (what the table uses) vs bucketized cuckoo hashing, measured.

``freshrec bench probe --json [--quick] [--entries N]``

Both index the same N random fids with ``int32`` row ids pointing into one ``keys`` array
(as the table does) and compare the full fid, so both are collisionless:

* linear probing at the table's load (0.6 after the last growth, up to ``max_load`` 0.7);
* cuckoo: two candidate buckets of 4 slots (one 16-byte read each), sized for a load of
  ``--cuckoo-load`` (0.9), inserts kicking a random victim to its other bucket.

Reported: find-only lookups/s (Zipf s=1.05 and uniform), inserts/s, index bytes per entry.
The kernels live here: this is the measurement behind the choice, not library code.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

from freshrec.benchinfo import machine_info
from freshrec.table._kernels import mix64

_C2 = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _lp_build(keys: np.ndarray, index: np.ndarray) -> None:
    mask = np.int64(index.shape[0] - 1)
    for r in range(keys.shape[0]):
        h = np.int64(mix64(keys[r]) & np.uint64(mask))
        while index[h] >= 0:
            h = (h + 1) & mask
        index[h] = r


@njit(cache=True)
def _lp_find(index: np.ndarray, keys: np.ndarray, fids: np.ndarray) -> int:
    mask = np.int64(index.shape[0] - 1)
    hit = 0
    for i in range(fids.shape[0]):
        fid = fids[i]
        h = np.int64(mix64(fid) & np.uint64(mask))
        while True:
            r = index[h]
            if r == -1:
                break
            if r >= 0 and keys[r] == fid:
                hit += 1
                break
            h = (h + 1) & mask
    return hit


@njit(cache=True)
def _ck_build(keys: np.ndarray, buckets: np.ndarray, seed: int) -> int:
    """Insert every row; returns the number of rows that could not be placed."""
    nb = np.uint64(buckets.shape[0])
    np.random.seed(seed)
    failed = 0
    for r0 in range(keys.shape[0]):
        r = r0
        placed = False
        for _kick in range(500):
            k = keys[r]
            b1 = np.int64(mix64(k) % nb)
            b2 = np.int64(mix64(k ^ _C2) % nb)
            for bb in (b1, b2):
                for s in range(4):
                    if buckets[bb, s] < 0:
                        buckets[bb, s] = r
                        placed = True
                        break
                if placed:
                    break
            if placed:
                break
            b = b1 if np.random.random() < 0.5 else b2
            s = np.random.randint(0, 4)
            victim = buckets[b, s]
            buckets[b, s] = r
            r = victim
        if not placed:
            failed += 1
    return failed


@njit(cache=True)
def _ck_find(buckets: np.ndarray, keys: np.ndarray, fids: np.ndarray) -> int:
    nb = np.uint64(buckets.shape[0])
    hit = 0
    for i in range(fids.shape[0]):
        fid = fids[i]
        b1 = np.int64(mix64(fid) % nb)
        found = False
        for s in range(4):
            r = buckets[b1, s]
            if r >= 0 and keys[r] == fid:
                found = True
                break
        if not found:
            b2 = np.int64(mix64(fid ^ _C2) % nb)
            for s in range(4):
                r = buckets[b2, s]
                if r >= 0 and keys[r] == fid:
                    found = True
                    break
        if found:
            hit += 1
    return hit


def _pow2(n: float) -> int:
    p = 16
    while p < n:
        p *= 2
    return p


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench probe")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--entries", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cuckoo-load", type=float, default=0.9)
    opts = ap.parse_args(argv)
    n = opts.entries or (1_000_000 if opts.quick else 10_000_000)
    say = print if verbose else (lambda *a, **k: None)
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**64 - 1, int(n * 1.01), dtype=np.uint64))[:n]
    keys = rng.permutation(keys)
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -1.05)
    cdf /= cdf[-1]
    zipf = keys[np.minimum(np.searchsorted(cdf, rng.random(2_000_000)), n - 1)]
    unif = keys[rng.integers(0, n, 2_000_000)]
    small = keys[:1000].copy()
    # compile
    _lp_find(np.full(2048, -1, np.int32), small, small)
    _ck_find(np.full((512, 4), -1, np.int32), small, small)
    _lp_build(small, np.full(2048, -1, np.int32))
    _ck_build(small, np.full((512, 4), -1, np.int32), 0)

    lp = np.full(_pow2(n / 0.6), -1, np.int32)
    t0 = time.perf_counter()
    _lp_build(keys, lp)
    lp_insert = n / (time.perf_counter() - t0)
    ck = np.full((int(n / (4 * opts.cuckoo_load)) + 1, 4), -1, np.int32)
    t0 = time.perf_counter()
    failed = _ck_build(keys, ck, 0)
    ck_insert = n / (time.perf_counter() - t0)
    rates: dict[str, list[float]] = {}
    for _ in range(opts.rounds):
        for name, fn, idx in (("linear", _lp_find, lp), ("cuckoo", _ck_find, ck)):
            for dist, data in (("zipf", zipf), ("uniform", unif)):
                t0 = time.perf_counter()
                hits = fn(idx, keys, data)
                rates.setdefault(f"{name}_{dist}", []).append(
                    data.shape[0] / (time.perf_counter() - t0))
                assert hits == data.shape[0]
    result: dict[str, object] = {
        "bench": "probe", "entries": n, "threads": 1,
        "linear_find_fids_per_s_zipf": float(np.median(rates["linear_zipf"])),
        "linear_find_fids_per_s_uniform": float(np.median(rates["linear_uniform"])),
        "cuckoo_find_fids_per_s_zipf": float(np.median(rates["cuckoo_zipf"])),
        "cuckoo_find_fids_per_s_uniform": float(np.median(rates["cuckoo_uniform"])),
        "linear_insert_fids_per_s": lp_insert, "cuckoo_insert_fids_per_s": ck_insert,
        "linear_load_factor": n / lp.shape[0], "cuckoo_load_factor": n / ck.size,
        "linear_index_bytes_per_entry": lp.nbytes / n, "cuckoo_index_bytes_per_entry": ck.nbytes / n,
        "cuckoo_failed_inserts": int(failed), **machine_info(),
    }
    say(result)
    return result
