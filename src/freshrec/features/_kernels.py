"""numba kernels of fid hashing (private). See :mod:`freshrec.features.hashing`."""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec.table._kernels import mix64

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, nogil=True)
def fnv1a64(data: np.ndarray, start: int, end: int) -> np.uint64:
    """FNV-1a 64 of ``data[start:end]`` (uint8)."""
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return h


@njit(cache=True, nogil=True)
def hash_ints(slot_key: np.uint64, values: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = mix64(slot_key ^ mix64(values[i]))`` for int64 values (two's complement)."""
    for i in range(values.shape[0]):
        out[i] = mix64(slot_key ^ mix64(np.uint64(values[i])))


@njit(cache=True, nogil=True)
def hash_strings(slot_key: np.uint64, data: np.ndarray, offsets: np.ndarray,
                 out: np.ndarray) -> None:
    """``out[i] = mix64(slot_key ^ fnv1a64(utf8 bytes of string i))`` over Arrow buffers."""
    for i in range(offsets.shape[0] - 1):
        out[i] = mix64(slot_key ^ fnv1a64(data, offsets[i], offsets[i + 1]))
