"""Dedupe keys of the joiner: the newest in memory, every one in LMDB at each checkpoint.

A :class:`KeyIndex` remembers keys (event ids, emitted request ids) grouped by a time bucket
(event time // 60 s). A key added between checkpoints lives in memory only; :meth:`flush`
writes the new keys in one batch (``putmulti``) into the caller's write transaction, which the
joiner commits together with its offsets, so a restart finds exactly the keys of the input it
no longer re-reads. Memory is bounded: after a flush the oldest buckets are dropped until at
most ``max_in_memory`` keys are left. Memory is *complete* from bucket ``complete_from`` on
(it holds every key of those buckets), so a lookup there never touches LMDB; a lookup in an
older bucket, or by key alone while older buckets exist in LMDB only, falls back to LMDB.

Expiry is a horizon: keys of buckets older than :attr:`KeyIndex.horizon` are gone for every
lookup at once, and deleted from LMDB a slice at a time at each flush (at least twice as
many as the flush wrote, so the deletion keeps up with the input): a joiner that expires a
minute of keys does not stop for the seconds their deletion takes. The caller persists the
horizon with its offsets (and gives it back to :meth:`KeyIndex.load`).

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

#: keys deleted from LMDB per flush at least (expired buckets)
PURGE_PER_FLUSH = 20_000


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
        #: the keys of buckets older than this one are expired (LMDB may still hold some)
        self.horizon = 0

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, txn: Any, horizon: int = 0) -> None:
        """Read the newest buckets from LMDB (up to ``max_in_memory`` keys, whole buckets),
        none older than ``horizon`` (the :attr:`horizon` that was persisted)."""
        self._keys.clear()
        self._buckets.clear()
        self._new.clear()
        self._new_buckets.clear()
        self.complete_from = -math.inf
        self.horizon = horizon
        cur = txn.cursor(db=self._index if self._index is not None else self._main)
        if not cur.last():
            return
        for k in cur.iterprev(values=False):
            b = int.from_bytes(k[:8], "big")
            if b < horizon:
                break
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
        got = txn.get(key, db=self._main)
        if got is None:
            return False
        # not expired (bucketed: the key starts with its bucket; indexed: the value is it)
        return int.from_bytes((got if self._index is not None else key)[:8],
                              "big") >= self.horizon

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
        """Write the keys added since the last flush, delete a slice of the expired ones,
        then trim memory to its bound."""
        self._purge(txn, max(PURGE_PER_FLUSH, 2 * len(self._new)))
        if self._new:
            # written in key order: LMDB then fills its pages one after the other instead
            # of landing each key on a random page of the tree (~30 % less per key); pairs
            # made by zip and map, not by a Python loop: a flush holds every new key
            empty = itertools.repeat(b"")
            if self._index is None:
                txn.cursor(db=self._main).putmulti(zip(sorted(self._new), empty, strict=False))
            else:
                prefix = {b: bucket_key(b, b"") for b in set(self._new_buckets)}
                buckets = list(map(prefix.__getitem__, self._new_buckets))
                order = sorted(range(len(self._new)), key=self._new.__getitem__)  # stable
                txn.cursor(db=self._main).putmulti(
                    zip(map(self._new.__getitem__, order), map(buckets.__getitem__, order),
                        strict=True))
                txn.cursor(db=self._index).putmulti(
                    zip(sorted(map(bytes.__add__, buckets, self._new)), empty, strict=False))
            self._new.clear()
            self._new_buckets.clear()
        while len(self._keys) > self._max and self._buckets:
            b = min(self._buckets)
            for key in self._buckets.pop(b):
                del self._keys[key]
            self.complete_from = max(self.complete_from, b + 1)

    def expire(self, horizon: int) -> None:
        """Forget every key of a bucket older than ``horizon``: at once for lookups, from
        LMDB over the next flushes."""
        if horizon <= self.horizon:
            return
        self.horizon = horizon
        for b in [b for b in self._buckets if b < horizon]:
            for key in self._buckets.pop(b):
                del self._keys[key]
        kept = [i for i, b in enumerate(self._new_buckets) if b >= horizon]
        if len(kept) < len(self._new):
            self._new = [self._new[i] for i in kept]
            self._new_buckets = [self._new_buckets[i] for i in kept]
        if horizon >= self.complete_from:
            self.complete_from = -math.inf  # what LMDB still holds unexpired is in memory

    def _purge(self, txn: Any, budget: int) -> int:
        """Delete up to ``budget`` expired keys from LMDB, oldest first; returns how many."""
        bound = bucket_key(self.horizon, b"")  # every key of an older bucket sorts before
        cur = txn.cursor(db=self._index if self._index is not None else self._main)
        n = 0
        if not cur.first():
            return 0
        if self._index is None:
            while n < budget and cur.key() < bound and cur.delete():
                n += 1
            return n
        main = txn.cursor(db=self._main)
        while n < budget:
            k = cur.key()
            if not k or k >= bound:
                break
            # the key's item, unless the key was added again since (a newer bucket)
            if main.set_key(k[8:]) and main.value() == k[:8]:
                main.delete()
            cur.delete()
            n += 1
        return n
