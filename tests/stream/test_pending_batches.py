"""PendingBatches: one LMDB item per checkpoint's new pending impressions, a bitmap of the
members that left, restore of the rest."""

from __future__ import annotations

import lmdb
import pytest

from freshrec.stream.pending_batches import PendingBatches


class _Member:
    def __init__(self, k: int) -> None:
        self.src, self.deadline_ms, self.batch, self.slot = (k % 3, k), 1000 + k, -1, 0


class _Store:
    """An LMDB environment and its two dbs (opened outside any transaction: opening one
    inside this thread's write transaction would wait for it)."""

    def __init__(self, path) -> None:
        self.env = lmdb.open(str(path), max_dbs=2)
        self.dbs = {n: self.env.open_db(n) for n in (b"pbatch", b"pgone")}

    def begin(self, write: bool = False):
        return self.env.begin(write=write)


@pytest.fixture()
def env(tmp_path):
    store = _Store(tmp_path)
    yield store
    store.env.close()


def _batches(env):
    return PendingBatches(env.dbs[b"pbatch"], env.dbs[b"pgone"])


def _items(env, name):
    with env.begin() as txn:
        return txn.stat(env.dbs[name])["entries"]


def test_members_that_did_not_leave_are_restored_across_batches(env):
    batches = _batches(env)
    first = [_Member(k) for k in range(13)]  # more than one byte of bitmap
    second = [_Member(k) for k in range(13, 20)]
    with env.begin(write=True) as txn:
        batches.add(txn, [(f"r{m.src[1]}", m) for m in first])
        batches.add(txn, [(f"r{m.src[1]}", m) for m in second])
        batches.flush(txn)
    assert [m.batch for m in first + second] == [0] * 13 + [1] * 7
    assert [m.slot for m in second] == list(range(7))
    with env.begin(write=True) as txn:
        for k in (0, 7, 8, 12):  # both ends of both bytes of the first batch
            batches.leave(first[k])
        batches.leave(second[3])
        batches.flush(txn)
    assert first[0].batch == -1 and batches.live() == 20 - 5
    with env.begin(write=True) as txn:
        got = list(_batches(env).restore(txn))
    left = {0, 7, 8, 12, 16}
    assert got == [(f"r{k}", k % 3, k, 1000 + k) for k in range(20) if k not in left]
    assert _items(env, b"pbatch") == _items(env, b"pgone") == 0  # restore drops them


def test_a_batch_is_deleted_once_every_member_left(env):
    batches = _batches(env)
    members = [_Member(k) for k in range(4)]
    with env.begin(write=True) as txn:
        batches.add(txn, [(f"r{k}", m) for k, m in enumerate(members)])
        batches.add(txn, [])  # nothing new: no batch
        batches.flush(txn)
    assert _items(env, b"pbatch") == 1 and _items(env, b"pgone") == 0
    with env.begin(write=True) as txn:
        for m in members[:3]:
            batches.leave(m)
        batches.flush(txn)
    assert _items(env, b"pgone") == 1 and batches.live() == 1
    with env.begin(write=True) as txn:
        batches.leave(members[3])
        batches.flush(txn)
    assert _items(env, b"pbatch") == _items(env, b"pgone") == 0 and batches.live() == 0
    with env.begin(write=True) as txn:
        assert list(_batches(env).restore(txn)) == []


def test_what_left_after_the_last_flush_is_still_restored(env):
    """Leaving is written at the next flush, in the caller's transaction: a crash before it
    (the transaction aborted) restores the member."""
    batches = _batches(env)
    m = _Member(5)
    with env.begin(write=True) as txn:
        batches.add(txn, [("r5", m)])
        batches.flush(txn)
    txn = env.begin(write=True)
    batches.leave(m)
    batches.flush(txn)
    txn.abort()
    with env.begin(write=True) as txn:
        assert list(_batches(env).restore(txn)) == [("r5", 2, 5, 1005)]
