"""Stable 64-bit feature ids (fids) of (slot, raw value).

The same value of the same slot gets the same fid in every process, run and machine:

* ``slot_key = mix64(fnv1a64(utf8(slot)))``
* integer values (and booleans, as 0/1): ``fid = mix64(slot_key ^ mix64(uint64(value)))``
  where ``uint64(value)`` is the int64 two's-complement bit pattern;
* strings: ``fid = mix64(slot_key ^ fnv1a64(utf8(value)))``;
* floats used as categories are rounded to int64 first (bucketise them beforehand if needed);

with ``fnv1a64`` the 64-bit FNV-1a hash and ``mix64`` splitmix64's finaliser
(``x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB;
x ^= x >> 31``). Python's ``hash`` is never used (it is salted per process). Distinct
(slot, value) pairs collide only by a 64-bit hash collision, with probability about
``n**2 / 2**65`` for ``n`` distinct values (1e-7 for 2 billion values): the table itself
never merges distinct fids.

Examples
--------
>>> import pyarrow as pa
>>> hash_array("user_id", pa.array([1, 2, 1])).tolist() == hash_array("user_id", [1, 2, 1]).tolist()
True
>>> int(hash_array("user_id", [1])[0]) == int(hash_array("item_id", [1])[0])
False
>>> hex(int(fid("genre", "Comedy")))
'0x29bbe2c05550cb8a'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.errors import InputError
from freshrec.features import _kernels as K
from freshrec.table._kernels import mix64

__all__ = ["slot_key", "hash_array", "fid"]


def slot_key(slot: str) -> np.uint64:
    """The 64-bit key mixed into every fid of ``slot``."""
    data = np.frombuffer(slot.encode("utf-8"), dtype=np.uint8)
    return np.uint64(mix64(np.uint64(K.fnv1a64(data, 0, data.shape[0]))))


def hash_array(slot: str, values: Any) -> npt.NDArray[np.uint64]:
    """Fids of a 1-d array of non-null ints, bools or strings (Arrow, numpy or list)."""
    arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise InputError(f"hash_array({slot!r}): values contain {arr.null_count} nulls")
    key = slot_key(slot)
    out = np.empty(len(arr), np.uint64)
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        ints = arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
        K.hash_ints(key, np.ascontiguousarray(ints, np.int64), out)
    elif pa.types.is_floating(t):
        ints = pc.round(arr).cast(pa.int64()).to_numpy(zero_copy_only=False)
        K.hash_ints(key, np.ascontiguousarray(ints, np.int64), out)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        big = arr.cast(pa.large_binary())
        bufs = big.buffers()
        offsets = np.frombuffer(bufs[1], np.int64, count=len(big) + 1, offset=big.offset * 8)
        data = (np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None
                else np.empty(0, np.uint8))
        K.hash_strings(key, data, np.ascontiguousarray(offsets), out)
    else:
        raise InputError(f"hash_array({slot!r}): cannot hash values of type {t}")
    return out


def fid(slot: str, value: int | str) -> np.uint64:
    """The fid of one value (convenience; use :func:`hash_array` for arrays)."""
    return np.uint64(hash_array(slot, [value])[0])
