"""Dedupe keys of the joiner: the newest in memory, every one in LMDB at each checkpoint.

A :class:`KeyIndex` remembers keys (event ids, emitted request ids) grouped by a time bucket
(event time // 60 s). A key added between checkpoints lives in memory only; :meth:`flush`
writes the new keys in one batch (``putmulti``) into the caller's write transaction, which the
joiner commits together with its offsets, so a restart finds exactly the keys of the input it
no longer re-reads. Memory is bounded: after a flush the oldest buckets are dropped until at
most ``max_in_memory`` keys are left. Memory is *complete* from bucket ``complete_from`` on
(it holds every key of those buckets), so a lookup there never touches LMDB; a lookup in an
older bucket, or by key alone while older buckets exist in LMDB only, falls back to LMDB.

Two layouts in LMDB:

- ``bucketed`` (event ids): the key itself starts with the 8-byte big-endian bucket
  (``main`` db, empty values); lookups pass the bucket.
- ``indexed`` (request ids): ``main`` maps the key to its bucket and ``index`` holds
  ``bucket + key``; lookups by key alone.

Examples
--------
>>> import tempfile, lmdb
>>> env = lmdb.open(tempfile.mkdtemp(), max_dbs=2)
>>> main = env.open_db(b"seen")
>>> keys = KeyIndex(env, main, None, max_in_memory=10)
>>> with env.begin(write=True) as txn:
...     keys.load(txn)
...     first, again = keys.add(txn, bucket_key(3, b"e1"), 3), keys.add(txn, bucket_key(3, b"e1"), 3)
...     keys.flush(txn)
>>> first, again, len(keys)
(True, False, 1)
"""

from __future__ import annotations

import itertools
import math
from typing import Any

__all__ = ["KeyIndex", "bucket_key"]


def bucket_key(bucket: int, key: bytes) -> bytes:
    """``key`` prefixed by its bucket (8 bytes, big-endian, so LMDB orders keys by bucket)."""
    return max(bucket, 0).to_bytes(8, "big") + key


class KeyIndex:
    """Keys grouped by time bucket, bounded in memory, persisted at each flush.

    Parameters
    ----------
    env
        The LMDB environment.
    main
        The db of the keys (``bucketed`` layout when ``index`` is None).
    index
        The ``bucket + key`` db of the ``indexed`` layout, or None.
    max_in_memory
        Keys kept in memory after a flush (the newest buckets).
    """

    def __init__(self, env: Any, main: Any, index: Any | None, *, max_in_memory: int) -> None:
        self._env, self._main, self._index = env, main, index
        self._max = max_in_memory
        self._keys: dict[bytes, int] = {}  # key -> bucket
        self._buckets: dict[int, list[bytes]] = {}  # bucket -> its keys in memory
        # added since the last flush: keys and their buckets (two lists: no tuple per key
        # for the garbage collector to track)
        self._new: list[bytes] = []
        self._new_buckets: list[int] = []
        #: memory holds every key of the buckets >= this one
        self.complete_from: float = -math.inf

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, txn: Any) -> None:
        """Read the newest buckets from LMDB (up to ``max_in_memory`` keys, whole buckets)."""
        self._keys.clear()
        self._buckets.clear()
        self._new.clear()
        self._new_buckets.clear()
        self.complete_from = -math.inf
        cur = txn.cursor(db=self._index if self._index is not None else self._main)
        if not cur.last():
            return
        for k in cur.iterprev(values=False):
            b = int.from_bytes(k[:8], "big")
            if len(self._keys) >= self._max:  # bucket b does not fit whole: leave it out
                for key in self._buckets.pop(b, []):
                    del self._keys[key]
                self.complete_from = b + 1
                break
            key = k if self._index is None else k[8:]
            self._keys[key] = b
            self._buckets.setdefault(b, []).append(key)

    def contains(self, txn: Any, key: bytes, bucket: int | None = None) -> bool:
        """Whether ``key`` was added (``bucket``: its bucket, when the layout has one)."""
        if key in self._keys:
            return True
        if self.complete_from == -math.inf or (bucket is not None
                                               and bucket >= self.complete_from):
            return False
        return txn.get(key, db=self._main) is not None

    def add(self, txn: Any, key: bytes, bucket: int) -> bool:
        """Add ``key`` of ``bucket``; False when it was already there."""
        if key in self._keys or (self.complete_from != -math.inf and self.contains(
                txn, key, bucket if self._index is None else None)):
            return False
        self.add_new(key, bucket)
        return True

    def add_new(self, key: bytes, bucket: int) -> None:
        """Add ``key`` of ``bucket``, known not to be there (no lookup)."""
        self._keys[key] = bucket
        self._buckets.setdefault(bucket, []).append(key)
        self._new.append(key)
        self._new_buckets.append(bucket)

    def flush(self, txn: Any) -> None:
        """Write the keys added since the last flush, then trim memory to its bound."""
        if self._new:
            empty = itertools.repeat(b"")
            if self._index is None:
                txn.cursor(db=self._main).putmulti(zip(self._new, empty, strict=False))
            else:  # pairs made by zip, not by a Python loop: a flush holds every new key
                prefix = {b: bucket_key(b, b"") for b in set(self._new_buckets)}
                buckets = list(map(prefix.__getitem__, self._new_buckets))
                txn.cursor(db=self._main).putmulti(zip(self._new, buckets, strict=True))
                txn.cursor(db=self._index).putmulti(
                    zip(map(bytes.__add__, buckets, self._new), empty, strict=False))
            self._new.clear()
            self._new_buckets.clear()
        while len(self._keys) > self._max and self._buckets:
            b = min(self._buckets)
            for key in self._buckets.pop(b):
                del self._keys[key]
            self.complete_from = max(self.complete_from, b + 1)

    def expire(self, txn: Any, horizon: int) -> None:
        """Forget every key of a bucket older than ``horizon`` (memory and LMDB)."""
        for b in [b for b in self._buckets if b < horizon]:
            for key in self._buckets.pop(b):
                del self._keys[key]
        kept = [i for i, b in enumerate(self._new_buckets) if b >= horizon]
        if len(kept) < len(self._new):
            self._new = [self._new[i] for i in kept]
            self._new_buckets = [self._new_buckets[i] for i in kept]
        cur = txn.cursor(db=self._index if self._index is not None else self._main)
        while cur.first() and int.from_bytes(cur.key()[:8], "big") < horizon:
            if self._index is not None:
                txn.delete(cur.key()[8:], db=self._main)
            cur.delete()
        if horizon >= self.complete_from:
            self.complete_from = -math.inf  # what LMDB still holds is all in memory
