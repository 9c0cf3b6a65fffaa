"""Durable pending impressions of the joiner, written one batch per checkpoint.

Most impressions a joiner holds are never labelled: they wait out the label window and are
emitted. Writing each of them as its own LMDB item at a checkpoint and deleting it at
emission cost two B-tree updates per impression (about a tenth of a 1-candidate event's
cost). Instead, the impressions that became pending since the last checkpoint are written as
one item (their request ids, source positions and deadlines, column-wise) and each batch
keeps a bitmap of the members that have left it (emitted, or moved to an item of their
own: labelled, or spilled out of memory), rewritten at the checkpoints where it changed; a
batch whose members have all left is deleted. Everything is written in the caller's write
transaction, committed with its offsets. After a restart, :meth:`PendingBatches.restore`
yields the members still in their batches (then dropped): the joiner makes each its own item
again, as a spilled impression.

Examples
--------
>>> import tempfile, lmdb
>>> env = lmdb.open(tempfile.mkdtemp(), max_dbs=2)
>>> dbs = env.open_db(b"pbatch"), env.open_db(b"pgone")
>>> batches = PendingBatches(*dbs)
>>> class P:  # what a member needs: its source position, deadline and two slots
...     def __init__(self, src, d): self.src, self.deadline_ms, self.batch, self.slot = src, d, -1, 0
>>> a, b = P((0, 5), 9000), P((1, 2), 9500)
>>> with env.begin(write=True) as txn:
...     batches.add(txn, [("r1", a), ("r2", b)])
...     batches.leave(a)
...     batches.flush(txn)
>>> batches.live()
1
>>> with env.begin(write=True) as txn:
...     list(PendingBatches(*dbs).restore(txn))  # after a restart
[('r2', 1, 2, 9500)]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import orjson

__all__ = ["PendingBatches"]


class _Member(Protocol):
    src: tuple[int, int]
    deadline_ms: int
    batch: int  # the batch's sequence number, -1: in none
    slot: int  # its index in the batch


class _Batch:
    __slots__ = ("size", "live", "gone")

    def __init__(self, size: int) -> None:
        self.size, self.live = size, size
        self.gone = bytearray((size + 7) // 8)


def _seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


class PendingBatches:
    """Batches of pending impressions in LMDB (``members`` db: one item per batch;
    ``gone`` db: each batch's bitmap of the members that left it).

    Parameters
    ----------
    members, gone
        The two LMDB dbs (opened by the caller in its environment).
    """

    def __init__(self, members: Any, gone: Any) -> None:
        self._members_db, self._gone_db = members, gone
        self._batches: dict[int, _Batch] = {}
        self._touched: set[int] = set()
        self._next = 0

    def live(self) -> int:
        """Members still held by a batch (pending impressions durable in one)."""
        return sum(b.live for b in self._batches.values())

    def add(self, txn: Any, members: Sequence[tuple[str, _Member]]) -> None:
        """Write one batch of ``(request id, pending impression)``; each member's ``batch``
        and ``slot`` are set."""
        if not members:
            return
        seq = self._next
        self._next += 1
        for k, (_, m) in enumerate(members):
            m.batch, m.slot = seq, k
        txn.put(_seq_key(seq), orjson.dumps({
            "rid": [rid for rid, _ in members],
            "p": [m.src[0] for _, m in members],
            "o": [m.src[1] for _, m in members],
            "d": [m.deadline_ms for _, m in members]}), db=self._members_db)
        self._batches[seq] = _Batch(len(members))

    def leave(self, member: _Member) -> None:
        """``member`` left its batch (written at the next :meth:`flush`)."""
        b = self._batches[member.batch]
        b.gone[member.slot >> 3] |= 1 << (member.slot & 7)
        b.live -= 1
        self._touched.add(member.batch)
        member.batch = -1

    def flush(self, txn: Any) -> None:
        """Write the bitmaps of the batches changed since the last flush; delete the batches
        no member is left in."""
        for seq in self._touched:
            b = self._batches[seq]
            key = _seq_key(seq)
            if b.live:
                txn.put(key, bytes(b.gone), db=self._gone_db)
            else:
                del self._batches[seq]
                txn.delete(key, db=self._members_db)
                txn.delete(key, db=self._gone_db)
        self._touched.clear()

    def restore(self, txn: Any) -> Iterator[tuple[str, int, int, int]]:
        """``(request id, partition, offset, deadline ms)`` of every member still in a batch
        in LMDB; the batches are then dropped (the caller keeps the members another way)."""
        for key, raw in txn.cursor(db=self._members_db):
            cols = orjson.loads(raw)
            gone = txn.get(key, db=self._gone_db) or b""
            for k, rid in enumerate(cols["rid"]):
                if (k >> 3) < len(gone) and gone[k >> 3] >> (k & 7) & 1:
                    continue
                yield rid, cols["p"][k], cols["o"][k], cols["d"][k]
        txn.drop(self._members_db, delete=False)
        txn.drop(self._gone_db, delete=False)
        self._batches.clear()
        self._touched.clear()
