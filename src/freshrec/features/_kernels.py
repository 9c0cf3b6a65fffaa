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
_TEN = np.uint64(10)
_DIGIT0 = np.uint64(48)  # b"0"
_MINUS = 45  # b"-"
_MAX_DIV10 = np.uint64(1844674407370955161)  # (2**64 - 1) // 10
_MAX_LAST = np.uint64(5)  # (2**64 - 1) % 10
_NEG_LIMIT = np.uint64(1 << 63)  # |-2**63|


@njit(cache=True, nogil=True)
def fnv1a64(data: np.ndarray, start: int, end: int) -> np.uint64:
    """FNV-1a 64 of ``data[start:end]`` (uint8)."""
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return h


@njit(cache=True, nogil=True)
def decimal_bits(data: np.ndarray, start: int, end: int) -> tuple[bool, np.uint64]:
    """``(True, bits)`` when ``data[start:end]`` is the canonical decimal form of an integer in
    ``[-2**63, 2**64)`` (``-?(0|[1-9][0-9]*)``, not ``-0``): ``bits`` is its 64-bit two's
    complement pattern; ``(False, 0)`` otherwise."""
    neg = end > start and data[start] == _MINUS
    i = start + 1 if neg else start
    if i == end or (np.uint64(data[i]) == _DIGIT0 and (neg or end - i > 1)):
        return False, _ZERO
    acc = _ZERO
    for k in range(i, end):
        c = np.uint64(data[k]) - _DIGIT0  # wraps past 9 for every byte that is not a digit
        if c > np.uint64(9) or acc > _MAX_DIV10 or (acc == _MAX_DIV10 and c > _MAX_LAST):
            return False, _ZERO
        acc = acc * _TEN + c
    if neg:
        if acc > _NEG_LIMIT:
            return False, _ZERO
        return True, _ZERO - acc
    return True, acc


@njit(cache=True, nogil=True, inline="always")
def string_hash(data: np.ndarray, start: int, end: int) -> np.uint64:
    """The value hash of the UTF-8 string ``data[start:end]``: an integer's when it spells one
    (:func:`decimal_bits`), else its FNV-1a 64."""
    ok, bits = decimal_bits(data, start, end)
    return mix64(bits) if ok else fnv1a64(data, start, end)


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
