"""numba kernels of fid hashing (private). See :mod:`freshrec.features.hashing` for the rule.

Pure functions over arrays and scalars. Every fid is ``mix64(slot_key ^ value_hash)``; an
integer's value hash is ``mix64`` of its 64-bit pattern, a string's is the same as the integer
it spells when it is the canonical decimal form of one (``"7"``, ``"-3"``), else its FNV-1a 64.
Plain-Python references: ``tests/features/_reference.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec.table._kernels import mix64

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_ZERO = np.uint64(0)
_NINE = np.uint64(9)
_TEN = np.uint64(10)
_DIGIT0 = np.uint64(48)  # b"0"
_MINUS = 45  # b"-"
_NEG_LIMIT = np.uint64(1 << 63)  # |-2**63|
_UINT64_MAX_DIGITS = np.frombuffer(str(2**64 - 1).encode(), np.uint8)


@njit(cache=True, nogil=True)
def fnv1a64(data: np.ndarray, start: int, end: int) -> np.uint64:
    """FNV-1a 64 of ``data[start:end]`` (uint8)."""
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return h


@njit(cache=True, nogil=True, inline="always")
def string_hash(data: np.ndarray, start: int, end: int) -> np.uint64:
    """The value hash of the UTF-8 string ``data[start:end]``: an integer's (``mix64`` of its
    64-bit two's complement pattern) when the string is the canonical decimal form of an
    integer in ``[-2**63, 2**64)`` (``-?(0|[1-9][0-9]*)``, not ``-0``), else its FNV-1a 64.

    One pass computes both, without a branch per byte: whether a string is decimal, and
    where its first other byte is, is random in a column of hex ids (Criteo's).
    """
    h = _FNV_OFFSET
    neg = end > start and data[start] == _MINUS
    first = start + 1 if neg else start
    if neg:
        h = (h ^ np.uint64(_MINUS)) * _FNV_PRIME
    acc = _ZERO
    bad = False
    for k in range(first, end):
        b = np.uint64(data[k])
        h = (h ^ b) * _FNV_PRIME
        c = b - _DIGIT0  # wraps past 9 for every byte that is not a digit
        bad |= bool(c > _NINE)
        acc = acc * _TEN + c
    n = end - first
    if bad or n == 0 or n > 20 or (np.uint64(data[first]) == _DIGIT0 and (neg or n > 1)):
        return h
    if n == 20:  # acc may have wrapped: compare the digits with 2**64 - 1's
        for k in range(20):
            if data[first + k] != _UINT64_MAX_DIGITS[k]:
                if data[first + k] > _UINT64_MAX_DIGITS[k]:
                    return h
                break
    if neg and acc > _NEG_LIMIT:
        return h
    return mix64(_ZERO - acc if neg else acc)


@njit(cache=True, nogil=True)
def hash_ints(slot_key: np.uint64, values: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = mix64(slot_key ^ mix64(values[i]))`` for int64 values (two's complement)."""
    for i in range(values.shape[0]):
        out[i] = mix64(slot_key ^ mix64(np.uint64(values[i])))


@njit(cache=True, nogil=True)
def hash_ints_keyed(keys: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """:func:`hash_ints` with a slot key per value: the fids of several slots in one call."""
    for i in range(values.shape[0]):
        out[i] = mix64(keys[i] ^ mix64(np.uint64(values[i])))


@njit(cache=True, nogil=True)
def hash_strings(slot_key: np.uint64, data: np.ndarray, offsets: np.ndarray,
                 out: np.ndarray) -> None:
    """``out[i] = mix64(slot_key ^ string_hash(string i))`` over Arrow buffers (UTF-8 bytes
    ``data``, int64 ``offsets``)."""
    for i in range(offsets.shape[0] - 1):
        out[i] = mix64(slot_key ^ string_hash(data, offsets[i], offsets[i + 1]))
