"""KeyIndex: bounded memory over LMDB, checked against a set; what a restart reads back."""

from __future__ import annotations

import random

import lmdb
import pytest

from freshrec.stream import dedupe
from freshrec.stream.dedupe import KeyIndex, bucket_key


def _env(path):
    env = lmdb.open(str(path), max_dbs=4, map_size=1 << 26)
    return env, env.open_db(b"main"), env.open_db(b"index")


def _lmdb_keys(env, db):
    with env.begin() as txn:
        return list(txn.cursor(db=db).iternext(values=False))


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("cap", [0, 7, 1000])
def test_matches_a_set_across_flushes_expiry_and_restarts(tmp_path, indexed, cap,
                                                          monkeypatch):
    """Expired keys are deleted from LMDB a few per flush here: lookups must not see the
    ones still there, before and after a restart."""
    monkeypatch.setattr(dedupe, "PURGE_PER_FLUSH", 3)
    rng = random.Random(cap * 2 + indexed)
    env, main, index = _env(tmp_path)
    keys = KeyIndex(env, main, index if indexed else None, max_in_memory=cap)
    committed: dict[bytes, int] = {}  # what LMDB holds after the last commit
    live: dict[bytes, int] = {}  # committed + added since
    horizon = committed_horizon = 0
    txn = env.begin(write=True)
    keys.load(txn)
    for step in range(1500):
        bucket = horizon + rng.randrange(6)
        raw = f"k{rng.randrange(60)}".encode()
        key = raw if indexed else bucket_key(bucket, raw)
        present = any(k == key and b >= horizon for k, b in live.items())
        got = keys.add(txn, key, bucket)
        assert got == (not present), (step, key)
        if got:
            live[key] = bucket
        if step % 97 == 0:  # a checkpoint
            keys.flush(txn)
            txn.commit()
            committed, committed_horizon = dict(live), horizon
            assert len(keys) <= max(cap, 0) or cap == 0 and len(keys) == 0
            txn = env.begin(write=True)
        if step % 331 == 0:  # a kill: what was added since the checkpoint is lost
            txn.abort()
            keys = KeyIndex(env, main, index if indexed else None, max_in_memory=cap)
            txn = env.begin(write=True)
            keys.load(txn, committed_horizon)  # the horizon is the caller's to persist
            live, horizon = dict(committed), committed_horizon
        if step % 250 == 249:  # the watermark moves: older buckets are forgotten
            horizon += 2
            keys.expire(horizon)
            live = {k: b for k, b in live.items() if b >= horizon}
    for key, b in live.items():
        assert keys.contains(txn, key, None if indexed else b)
    monkeypatch.setattr(dedupe, "PURGE_PER_FLUSH", 10_000)
    keys.flush(txn)  # every expired key is deleted now
    txn.commit()
    assert sorted(_lmdb_keys(env, main)) == sorted(live)
    if indexed:
        assert sorted(_lmdb_keys(env, index)) == sorted(bucket_key(b, k)
                                                        for k, b in live.items())
    env.close()


def test_a_key_added_again_after_expiry_outlives_its_old_bucket(tmp_path, monkeypatch):
    """Indexed layout: the old bucket's index entry, deleted after the key came back in a
    newer bucket, must not delete the key's item."""
    monkeypatch.setattr(dedupe, "PURGE_PER_FLUSH", 0)
    env, main, index = _env(tmp_path)
    keys = KeyIndex(env, main, index, max_in_memory=0)  # every lookup reads LMDB
    with env.begin(write=True) as txn:
        keys.load(txn)
        assert keys.add(txn, b"r1", 1)
        keys.flush(txn)
        keys.expire(5)  # bucket 1 expired, not yet deleted
        assert not keys.contains(txn, b"r1")
        assert keys.add(txn, b"r1", 6)
        keys.flush(txn)  # writes bucket 6's entries, deletes bucket 1's index entry
        assert keys.contains(txn, b"r1")
    assert _lmdb_keys(env, main) == [b"r1"] and _lmdb_keys(env, index) == [bucket_key(6, b"r1")]
    env.close()


def test_a_flush_deletes_at_least_twice_what_it_writes(tmp_path, monkeypatch):
    """The deletion of expired keys keeps up with any input rate."""
    monkeypatch.setattr(dedupe, "PURGE_PER_FLUSH", 0)
    env, main, _ = _env(tmp_path)
    keys = KeyIndex(env, main, None, max_in_memory=10_000)
    with env.begin(write=True) as txn:
        keys.load(txn)
        for i in range(300):
            keys.add_new(bucket_key(1, b"old%d" % i), 1)
        keys.flush(txn)
        keys.expire(2)
        for i in range(100):
            keys.add_new(bucket_key(2, b"new%d" % i), 2)
        keys.flush(txn)  # 100 written, 200 of the 300 expired deleted
    assert len(_lmdb_keys(env, main)) == 100 + 100
    env.close()


def test_memory_holds_the_newest_buckets_and_older_lookups_read_lmdb(tmp_path):
    env, main, _ = _env(tmp_path)
    keys = KeyIndex(env, main, None, max_in_memory=25)
    with env.begin(write=True) as txn:
        keys.load(txn)
        for b in range(10):
            for i in range(10):
                assert keys.add(txn, bucket_key(b, b"e%d" % i), b)
        keys.flush(txn)
        assert len(keys) == 20 and keys.complete_from == 8  # buckets 8 and 9
        assert keys.contains(txn, bucket_key(0, b"e3"), 0)  # from LMDB
        assert not keys.add(txn, bucket_key(2, b"e9"), 2)
        assert keys.add(txn, bucket_key(2, b"new"), 2)
        keys.flush(txn)
    again = KeyIndex(env, main, None, max_in_memory=25)
    with env.begin() as txn:
        again.load(txn)  # whole buckets only: 9 and 8 (20 keys), not part of 7
        assert len(again) == 20 and again.complete_from == 8
        assert again.contains(txn, bucket_key(2, b"new"), 2)
        assert not again.contains(txn, bucket_key(9, b"missing"), 9)
    env.close()
