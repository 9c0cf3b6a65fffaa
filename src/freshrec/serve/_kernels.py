"""numba kernels of the shared serving table (:mod:`freshrec.serve.shared`), each with a
plain-Python reference (``*_ref``) that tests compare it against.

The table is an open-addressing index of int32 row numbers (``EMPTY`` -1, ``TOMBSTONE`` -2)
over a ``keys`` array of fids and an ``emb`` array of rows; slots are probed linearly from
``mix(fid) & (slots - 1)``. Writers store a row's key and values before its index slot, so a
reader in another process that finds the slot finds the row (x86-64 keeps stores in order).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["EMPTY", "TOMBSTONE", "mix", "probe", "probe_ref", "pool", "pool_ref", "upsert",
           "upsert_ref", "remove", "remove_ref"]

EMPTY = -1
TOMBSTONE = -2


@njit(cache=True, nogil=True, inline="always")
def mix(fid: np.uint64) -> np.uint64:
    """A 64-bit finaliser (MurmurHash3's fmix64) spreading fids over the slots."""
    x = np.uint64(fid)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@njit(cache=True, nogil=True)
def _slot_of(index: np.ndarray, keys: np.ndarray, fid: np.uint64) -> np.int64:
    """The slot holding ``fid``, or -1."""
    mask = np.int64(index.shape[0] - 1)
    s = np.int64(mix(fid) & np.uint64(mask))
    for _ in range(index.shape[0]):
        r = index[s]
        if r == EMPTY:
            return np.int64(-1)
        if r >= 0 and keys[r] == fid:
            return s
        s = (s + 1) & mask
    return np.int64(-1)


@njit(cache=True, nogil=True)
def probe(index: np.ndarray, keys: np.ndarray, fids: np.ndarray, out: np.ndarray) -> None:
    """``out[i]``: the row of ``fids[i]``, -1 where absent."""
    for i in range(fids.shape[0]):
        s = _slot_of(index, keys, fids[i])
        out[i] = index[s] if s >= 0 else -1


@njit(cache=True, nogil=True)
def pool(emb: np.ndarray, rows: np.ndarray, offsets: np.ndarray, scale: np.ndarray,
         default: np.ndarray, out: np.ndarray) -> None:
    """``out[b] = scale[b] * sum(row(r) for r in bag b)``; row -1 reads as ``default``."""
    dim = emb.shape[1]
    for b in range(offsets.shape[0] - 1):
        for j in range(dim):
            out[b, j] = 0.0
        for k in range(offsets[b], offsets[b + 1]):
            r = rows[k]
            src = emb[r] if r >= 0 else default
            for j in range(dim):
                out[b, j] += src[j]
        if scale[b] != 1.0:
            for j in range(dim):
                out[b, j] *= scale[b]


@njit(cache=True, nogil=True)
def upsert(index: np.ndarray, keys: np.ndarray, emb: np.ndarray, n_used: int,
           fids: np.ndarray, values: np.ndarray, max_used: int) -> int:
    """Write ``values`` to the rows of ``fids``, appending rows ``n_used, n_used + 1, ...``
    for new fids; returns the new ``n_used``, or -1 (nothing more written) once a new fid
    would take the row count past ``max_used``."""
    mask = np.int64(index.shape[0] - 1)
    for i in range(fids.shape[0]):
        f = fids[i]
        s = _slot_of(index, keys, f)
        if s >= 0:
            emb[index[s]] = values[i]
            continue
        if n_used >= max_used:
            return -1
        r = n_used
        keys[r] = f
        emb[r] = values[i]
        t = np.int64(mix(f) & np.uint64(mask))
        while index[t] >= 0:
            t = (t + 1) & mask
        index[t] = r  # published last: a reader finding the slot finds the row
        n_used += 1
    return n_used


@njit(cache=True, nogil=True)
def remove(index: np.ndarray, keys: np.ndarray, fids: np.ndarray) -> int:
    """Tombstone the slots of ``fids`` (their rows are left unused until a rebuild);
    returns how many were present."""
    n = 0
    for i in range(fids.shape[0]):
        s = _slot_of(index, keys, fids[i])
        if s >= 0:
            index[s] = TOMBSTONE
            n += 1
    return n


# ---------------------------------------------------------------------- references
def _mix_ref(fid: int) -> int:
    m = (1 << 64) - 1
    x = int(fid)
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & m
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & m
    x ^= x >> 33
    return x


def _slot_ref(index: np.ndarray, keys: np.ndarray, fid: int) -> int:
    n = index.shape[0]
    s = _mix_ref(fid) & (n - 1)
    for _ in range(n):
        r = int(index[s])
        if r == EMPTY:
            return -1
        if r >= 0 and int(keys[r]) == int(fid):
            return s
        s = (s + 1) % n
    return -1


def probe_ref(index: np.ndarray, keys: np.ndarray, fids: np.ndarray, out: np.ndarray) -> None:
    """Reference of :func:`probe`."""
    for i, f in enumerate(fids):
        s = _slot_ref(index, keys, int(f))
        out[i] = index[s] if s >= 0 else -1


def pool_ref(emb: np.ndarray, rows: np.ndarray, offsets: np.ndarray, scale: np.ndarray,
             default: np.ndarray, out: np.ndarray) -> None:
    """Reference of :func:`pool`."""
    for b in range(offsets.shape[0] - 1):
        bag = [emb[r] if r >= 0 else default for r in rows[offsets[b]:offsets[b + 1]]]
        out[b] = scale[b] * np.sum(bag, axis=0) if bag else 0.0


def upsert_ref(index: np.ndarray, keys: np.ndarray, emb: np.ndarray, n_used: int,
               fids: np.ndarray, values: np.ndarray, max_used: int) -> int:
    """Reference of :func:`upsert`."""
    n = index.shape[0]
    for f, v in zip(fids, values, strict=True):
        s = _slot_ref(index, keys, int(f))
        if s >= 0:
            emb[index[s]] = v
            continue
        if n_used >= max_used:
            return -1
        keys[n_used], emb[n_used] = f, v
        s = _mix_ref(int(f)) & (n - 1)
        while index[s] >= 0:
            s = (s + 1) % n
        index[s] = n_used
        n_used += 1
    return n_used


def remove_ref(index: np.ndarray, keys: np.ndarray, fids: np.ndarray) -> int:
    """Reference of :func:`remove`."""
    n = 0
    for f in fids:
        s = _slot_ref(index, keys, int(f))
        if s >= 0:
            index[s] = TOMBSTONE
            n += 1
    return n
