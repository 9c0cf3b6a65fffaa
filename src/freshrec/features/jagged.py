"""``JaggedBatch``: the one batch type for multi-valued sparse features, used by every stage.

A batch of ``B`` examples over ``K`` slots stores the fids of all slots in one flat array,
slot-major, with one length per (slot, example)::

    keys    = ["user", "hist"]                     K = 2, B = 3
    user    : [u1]      [u2]      [u3]             lengths 1 1 1
    hist    : [i1 i2]   []        [i3 i4 i5]       lengths 2 0 3
    values  = [u1 u2 u3 i1 i2 i3 i4 i5]
    lengths = [1 1 1 2 0 3]
    offsets = [0 1 2 3 5 5 8]                      derived, cached

Examples
--------
>>> import numpy as np
>>> jb = JaggedBatch.from_dict({"user": [[1], [2], [3]], "hist": [[7, 8], [], [9, 9, 4]]})
>>> jb.batch_size, jb.keys
(3, ('user', 'hist'))
>>> jb.offsets().tolist()
[0, 1, 2, 3, 5, 5, 8]
>>> values, offsets = jb.slot("hist")
>>> values.tolist(), offsets.tolist()
([7, 8, 9, 9, 4], [0, 2, 2, 5])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from freshrec.errors import InputError
from freshrec.table.table import as_fids

__all__ = ["JaggedBatch"]


class JaggedBatch:
    """Keys, values and lengths of a jagged sparse batch (see the module docstring).

    Parameters
    ----------
    keys : sequence of str
        Slot names, in storage order.
    values : ndarray of uint64
        All fids, slot-major.
    lengths : ndarray of int32, shape (len(keys) * batch_size,)
        Number of fids of each (slot, example).
    """

    __slots__ = ("_keys", "_values", "_lengths", "_batch_size", "_offsets", "_index")

    def __init__(self, keys: Sequence[str], values: Any, lengths: Any) -> None:
        self._keys = tuple(keys)
        self._values = as_fids(values, "JaggedBatch: values")
        self._lengths = np.ascontiguousarray(lengths, dtype=np.int32)
        k = len(self._keys)
        if len(set(self._keys)) != k:
            raise InputError(f"JaggedBatch: duplicate key in {self._keys}")
        if self._lengths.ndim != 1 or (k and self._lengths.shape[0] % k):
            raise InputError(
                f"JaggedBatch: lengths must be 1-d with a multiple of {k} entries, "
                f"got shape {self._lengths.shape}"
            )
        if self._lengths.size and self._lengths.min() < 0:
            raise InputError("JaggedBatch: lengths must be >= 0")
        total = int(self._lengths.sum())
        if total != self._values.shape[0]:
            raise InputError(
                f"JaggedBatch: lengths sum to {total} but there are {self._values.shape[0]} values"
            )
        self._batch_size = self._lengths.shape[0] // k if k else 0
        self._offsets: npt.NDArray[np.int64] | None = None
        self._index = {key: i for i, key in enumerate(self._keys)}

    @classmethod
    def from_lengths(cls, keys: Sequence[str], values: Any, lengths: Any) -> JaggedBatch:
        """Build from flat values and per-(slot, example) lengths."""
        return cls(keys, values, lengths)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JaggedBatch:
        """Build from ``{slot: list of per-example id lists}`` or ``{slot: (values, lengths)}``.

        >>> JaggedBatch.from_dict({"a": (np.array([5, 6], np.uint64), [2, 0])}).lengths().tolist()
        [2, 0]
        """
        values, lengths = [], []
        sizes = set()
        for key, slot in data.items():
            if isinstance(slot, tuple) and len(slot) == 2:
                v = as_fids(slot[0], f"JaggedBatch slot {key!r}")
                ln = np.asarray(slot[1], dtype=np.int32)
            else:
                ln = np.array([len(x) for x in slot], dtype=np.int32)
                flat = [int(i) for x in slot for i in x]
                v = as_fids(np.array(flat, dtype=np.uint64) if flat else np.empty(0, np.uint64),
                            f"JaggedBatch slot {key!r}")
            sizes.add(ln.shape[0])
            values.append(v)
            lengths.append(ln)
        if len(sizes) > 1:
            raise InputError(f"JaggedBatch.from_dict: slots have different batch sizes {sizes}")
        if not values:
            return cls((), np.empty(0, np.uint64), np.empty(0, np.int32))
        return cls(list(data), np.concatenate(values), np.concatenate(lengths))

    @property
    def keys(self) -> tuple[str, ...]:
        """Slot names."""
        return self._keys

    @property
    def batch_size(self) -> int:
        """Examples in the batch."""
        return self._batch_size

    def values(self) -> npt.NDArray[np.uint64]:
        """All fids, slot-major."""
        return self._values

    def lengths(self) -> npt.NDArray[np.int32]:
        """Fids per (slot, example)."""
        return self._lengths

    def offsets(self) -> npt.NDArray[np.int64]:
        """Cumulative lengths with a leading 0 (cached)."""
        if self._offsets is None:
            off = np.zeros(self._lengths.shape[0] + 1, np.int64)
            np.cumsum(self._lengths, out=off[1:])
            self._offsets = off
        return self._offsets

    def slot(self, key: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        """``(values, offsets)`` of one slot, offsets starting at 0."""
        if key not in self._index:
            raise KeyError(f"JaggedBatch has no slot {key!r} (slots: {list(self._keys)})")
        i = self._index[key]
        b = self._batch_size
        off = self.offsets()[i * b : (i + 1) * b + 1]
        return self._values[off[0] : off[-1]], off - off[0]

    def to_dict(self) -> dict[str, list[list[int]]]:
        """``{slot: per-example id lists}`` (for debugging and tests)."""
        out = {}
        for key in self._keys:
            v, off = self.slot(key)
            out[key] = [v[off[j] : off[j + 1]].tolist() for j in range(self._batch_size)]
        return out

    def __repr__(self) -> str:
        return (f"JaggedBatch(keys={list(self._keys)}, batch_size={self._batch_size}, "
                f"values={self._values.shape[0]})")
