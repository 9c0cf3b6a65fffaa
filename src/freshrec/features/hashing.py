"""Stable 64-bit feature ids (fids) of (slot, raw value): the one rule, in training and serving.

The same value of the same slot gets the same fid in every process, run, machine and code
path (training's Arrow columns, a JSON request, a KServe v2 tensor of any datatype):

* ``slot_key = mix64(fnv1a64(utf8(slot)))`` (the slot's ``id_space``);
* **an id is an id whatever its type**: the integer 7, the string ``"7"`` (JSON, an Arrow
  string column, KServe ``BYTES``), the float ``7.0`` and ``True``/``1`` all name one id;
* integers (and booleans, as 0/1): ``fid = mix64(slot_key ^ mix64(bits(value)))``, where
  ``bits(value)`` is the 64-bit two's-complement pattern (so ``-1`` and ``2**64 - 1`` are
  one id), for values in ``[-2**63, 2**64)``;
* strings (and Arrow binary): a string that is the *canonical decimal form* of an integer
  in that range -- ``-?(0|[1-9][0-9]*)``, ASCII digits, no ``+``, no leading zeros or
  spaces, not ``-0``; exactly what ``str(n)`` gives -- hashes as that integer; any other
  string (``"007"``, ``"7.0"``, ``" 7"``, ``"Comedy"``) hashes as
  ``fid = mix64(slot_key ^ fnv1a64(utf8(value)))``;
* floats used as categories are rounded to the nearest integer (half to even) first;
  bucketise them beforehand if needed.

``fnv1a64`` is the 64-bit FNV-1a hash and ``mix64`` splitmix64's finaliser
(``x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB;
x ^= x >> 31``). Python's ``hash`` is never used (it is salted per process). Distinct ids
collide only by a 64-bit hash collision, with probability about ``n**2 / 2**65`` for ``n``
distinct values (1e-7 for 2 billion values): the table itself never merges distinct fids.
The known answers in ``tests/features/test_hashing.py`` pin the rule between releases.

:func:`hash_array` is the batch path (Arrow, numpy, lists of one type);
:mod:`freshrec.features.values` the per-request path (decoded JSON); both call the kernels of
``freshrec.features._kernels``.

Examples
--------
>>> import pyarrow as pa
>>> hash_array("user_id", pa.array([1, 2, 1])).tolist() == hash_array("user_id", [1, 2, 1]).tolist()
True
>>> int(fid("item_id", "7")) == int(fid("item_id", 7)) == int(hash_array("item_id", ["7"])[0])
True
>>> int(fid("item_id", "007")) == int(fid("item_id", 7)), int(fid("user_id", 1)) == int(fid("item_id", 1))
(False, False)
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

__all__ = ["slot_key", "hash_array", "hash_keyed", "fid"]


def slot_key(slot: str) -> np.uint64:
    """The 64-bit key mixed into every fid of ``slot`` (an ``id_space``)."""
    data = np.frombuffer(slot.encode("utf-8"), dtype=np.uint8)
    return np.uint64(mix64(np.uint64(K.fnv1a64(data, 0, data.shape[0]))))


def hash_array(slot: str, values: Any) -> npt.NDArray[np.uint64]:
    """Fids of a 1-d array of non-null ints, bools, floats or strings (Arrow, numpy or list).

    Raises
    ------
    InputError
        Nulls, or values of another type (the message names the slot and the type).
    """
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
        # uint64 past 2**63 keeps its bit pattern (two's complement), as the rule says
        ints = arr.cast(pa.int64(), safe=not pa.types.is_uint64(t))
        K.hash_ints(key, _int64s(ints), out)
    elif pa.types.is_floating(t):
        K.hash_ints(key, _int64s(pc.round(arr, round_mode="half_to_even").cast(pa.int64())), out)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or \
            pa.types.is_large_binary(t):
        big = arr.cast(pa.large_binary())
        bufs = big.buffers()
        offsets = np.frombuffer(bufs[1], np.int64, count=len(big) + 1, offset=big.offset * 8)
        data = (np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None
                else np.empty(0, np.uint8))
        K.hash_strings(key, data, np.ascontiguousarray(offsets), out)
    else:
        raise InputError(f"hash_array({slot!r}): cannot hash values of type {t} (expected "
                         f"ints, bools, floats or strings)")
    return out


def _int64s(arr: pa.Array) -> npt.NDArray[np.int64]:
    return np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), np.int64)


def hash_keyed(keys: npt.NDArray[np.uint64], values: npt.NDArray[np.int64]
               ) -> npt.NDArray[np.uint64]:
    """Fids of int64 ``values`` of several slots at once: ``keys[i]`` is the
    :func:`slot_key` of value ``i``'s slot. Equal to :func:`hash_array` slot by slot.

    >>> keys = np.array([slot_key("a"), slot_key("b")], np.uint64)
    >>> f = hash_keyed(keys, np.array([5, 5]))
    >>> int(f[0]) == int(fid("a", 5)), int(f[1]) == int(fid("b", 5))
    (True, True)
    """
    out = np.empty(values.shape[0], np.uint64)
    K.hash_ints_keyed(np.ascontiguousarray(keys, np.uint64),
                      np.ascontiguousarray(values, np.int64), out)
    return out


def fid(slot: str, value: int | str | float | bool) -> np.uint64:
    """The fid of one value (convenience; use :func:`hash_array` for arrays).

    >>> int(fid("item_id", 2**64 - 1)) == int(fid("item_id", -1))
    True
    """
    if type(value) is int and value >= 1 << 63:  # its two's-complement int64
        value -= 1 << 64
    return np.uint64(hash_array(slot, [value])[0])
