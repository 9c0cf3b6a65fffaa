"""The trainer's write-back cache: kill -9 in the middle of a flush, restart, and Redis holds
every acknowledged update exactly once (compared with a run never interrupted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from freshrec.config import config_from_dict
from freshrec.store import RedisTable
from freshrec.store.client import open_client
from freshrec.stream.open import open_log
from freshrec.train.online import OnlineTrainer

pytestmark = pytest.mark.redis

CHILD = """
import os, signal, sys, json
import torch
torch.set_num_threads(1)
from freshrec.config import config_from_dict
from freshrec.store.client import RowStore
from freshrec.stream.open import open_log
from freshrec.train.online import OnlineTrainer

raw, log_url, run_dir, kill_at = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
if kill_at:
    put, calls = RowStore.put, [0]
    def dying_put(self, fids, values, now=None):
        calls[0] += 1
        if calls[0] == kill_at:  # write half the rows of this flush, then die
            put(self, fids[: len(fids) // 2], values[: len(fids) // 2], now)
            os.kill(os.getpid(), signal.SIGKILL)
        return put(self, fids, values, now)
    RowStore.put = dying_put
online = OnlineTrainer(config_from_dict(raw), open_log(log_url), run_dir=run_dir)
print(json.dumps({"resumed_step": online.trainer.step}))
print(json.dumps(online.run(idle_timeout_s=0.0)["offsets"]))
"""


def config(url: str, prefix: str) -> dict[str, Any]:
    return {
        "features": {
            "tables": {"user": {"dim": 4, "backend": "redis", "optimizer": {"kind": "adagrad",
                                                                           "lr": 0.1},
                                "store": {"url": url, "prefix": prefix, "cache_rows": 40,
                                          "batch_keys": 16}},
                       "item": {"dim": 4}},
            "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"}},
            "labels": ["click"]},
        "model": {"kind": "deepfm", "mlp": [8]},
        "train": {"batch_size": 50},
        "online": {"max_records": 200, "checkpoint_every_s": 0.0},
    }


def examples(n: int) -> list[bytes]:
    rng = np.random.default_rng(3)
    users = rng.integers(0, 150, n)
    items = rng.integers(0, 30, n)
    return [orjson.dumps({"user_id": int(u), "item_id": int(i),
                          "click": float((u + i) % 3 == 0), "event_time": k})
            for k, (u, i) in enumerate(zip(users, items, strict=True))]


def run_child(raw: dict[str, Any], log_url: str, run_dir: Path, kill_at: int
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, json.dumps(raw), log_url, str(run_dir),
                           str(kill_at)], capture_output=True, text=True, timeout=300,
                          cwd=os.getcwd())


def redis_rows(url: str, prefix: str) -> dict[bytes, bytes]:
    """Every row of the user table under ``prefix`` (on a cluster: scanned on every node)."""
    client = open_client(url, "test")
    try:
        keys = list(client.scan_iter(match=f"{prefix}:user:*".encode(), count=1000))
        values = (client.mget_nonatomic(keys) if isinstance(client, redis.RedisCluster)
                  else client.mget(keys))
        return dict(zip(keys, values, strict=True))
    finally:
        client.close()


@pytest.mark.slow
def test_kill_9_mid_flush_then_restart_gives_each_update_once(store_url: str,
                                                             tmp_path: Path) -> None:
    """One server, then the 3-node cluster (the flush's pipelines split per node)."""
    redis_server = store_url
    log_url = f"file:{tmp_path / 'log'}"
    log = open_log(log_url)
    log.append(examples(1200))
    log.close()
    ref = OnlineTrainer(config_from_dict(config(redis_server, "ref")), open_log(log_url),
                        run_dir=tmp_path / "ref")
    ref.run(idle_timeout_s=0.0)
    ref.trainer.tables["user"].close()  # type: ignore[attr-defined]
    # killed with SIGKILL while its 4th flush has written half of its rows
    raw = config(redis_server, "crash")
    killed = run_child(raw, log_url, tmp_path / "crash", 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    half = redis_rows(redis_server, "crash")
    again = run_child(raw, log_url, tmp_path / "crash", 0)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[0])["resumed_step"] > 0
    assert json.loads(again.stdout.splitlines()[1]) == {"0": 1200}
    want, got = redis_rows(redis_server, "ref"), redis_rows(redis_server, "crash")
    assert len(want) == 150 and half and half != {k.replace(b"ref", b"crash"): v
                                                  for k, v in want.items()}
    assert {k.replace(b"ref", b"crash") for k in want} == set(got)
    for key, value in want.items():
        a = np.frombuffer(value, np.float32)
        b = np.frombuffer(got[key.replace(b"ref", b"crash")], np.float32)
        np.testing.assert_allclose(b, a, atol=1e-6, err_msg=key.decode())


def test_a_checkpoint_flushes_and_a_load_rewrites_the_pending_rows(store_url: str,
                                                                   tmp_path: Path,
                                                                   prefix: str) -> None:
    """What the restart relies on: the flush position travels in the checkpoint, and loading
    writes the rows changed after it again (a flush the crash cut short)."""
    cfg = config_from_dict(config(store_url, prefix)).features.table("user")
    table = RedisTable(cfg)
    table.lookup(np.arange(10, dtype=np.uint64), now=0, train=True)
    table.flush()
    table.apply_gradients(np.array([3], np.uint64), np.ones((1, 4), np.float32))
    table.save(tmp_path / "snap")          # the checkpoint holds row 3's new value ...
    client = open_client(store_url, "test")
    key = f"{prefix}:user:3".encode()
    before = client.get(key)               # ... Redis still the old one (the crash)
    restarted = RedisTable(cfg)
    restarted.load(tmp_path / "snap")
    after = client.get(key)
    assert before != after and after is not None
    np.testing.assert_array_equal(np.frombuffer(after, np.float32)[:4], table.lookup([3])[0])
    assert restarted.flushed_version > table.flushed_version
    client.close()
    table.close()
    restarted.close()
