from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import orjson
import pytest
import torch

from freshrec.config import config_from_dict
from freshrec.stream.open import open_log
from freshrec.sync import Registry, Subscriber
from freshrec.train.online import OnlineTrainer
from tests.conftest import start_redis

RAW = {
    "features": {
        "tables": {"user": {"dim": 4, "optimizer": {"kind": "adagrad", "lr": 0.1}},
                   "item": {"dim": 4, "optimizer": {"kind": "adagrad", "lr": 0.1},
                            "ttl_s": 150}},
        "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"}},
        "labels": ["click"]},
    "model": {"kind": "deepfm", "mlp": [8]},
    "train": {"batch_size": 64, "expire_every_s": 50},
    "online": {"max_records": 200, "checkpoint_every_s": 0.0},
    "sync": {"sparse_interval_s": 0.01, "full_interval_s": 1000.0, "dense_interval_s": 0.05},
}


def _examples(n: int, seed: int = 0, t0: int = 0, drift: bool = False) -> list[bytes]:
    """Examples; with ``drift`` a new set of 20 items every 500 (old ones go idle)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        u, it = int(rng.integers(0, 30)), int(rng.integers(0, 20))
        if drift:
            it += 20 * (i // 500)
        out.append(orjson.dumps({"user_id": u, "item_id": it, "click": float((u + it) % 3 == 0),
                                 "event_time": t0 + i // 4, "sample_rate": 1.0}))
    return out


def _state(trainer):
    tables = {n: {int(f): tuple(v) for f, v in zip(*_rows(t), strict=True)}
              for n, t in trainer.tables.items()}
    return tables, trainer.model.state_dict()


def _rows(table):
    d = table.export_delta(0)
    return d.fids.tolist(), d.values.tolist()


def test_online_resumes_exactly_after_kill_9(tmp_path):
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(3000))
    log.close()
    cfg = config_from_dict(RAW)
    # the uninterrupted run
    ref = OnlineTrainer(cfg, open_log(f"file:{tmp_path / 'log'}"), run_dir=tmp_path / "ref")
    ref.run(idle_timeout_s=0.0)
    # a run killed with SIGKILL after 7 steps (a checkpoint follows every step), restarted
    code = f"""
import os, signal
from freshrec.config import config_from_dict
from freshrec.stream.open import open_log
from freshrec.train.online import OnlineTrainer
from tests.train.test_online import RAW
t = OnlineTrainer(config_from_dict(RAW), open_log({str(tmp_path / 'log')!r}),
                  run_dir={str(tmp_path / 'crash')!r})
steps = [0]
def stop():
    steps[0] += 1
    if steps[0] > 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return False
t.run(idle_timeout_s=0.0, stop=stop)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    again = OnlineTrainer(cfg, open_log(f"file:{tmp_path / 'log'}"), run_dir=tmp_path / "crash")
    assert again.offsets == {0: 7 * 200}  # resumed at the last checkpoint
    summary = again.run(idle_timeout_s=0.0)
    assert summary["offsets"] == {0: 3000}
    assert again.trainer.examples == ref.trainer.examples == 3000  # none lost, none twice
    t_ref, d_ref = _state(ref.trainer)
    t_again, d_again = _state(again.trainer)
    assert t_ref == t_again
    for k in d_ref:
        assert torch.equal(d_ref[k], d_again[k]), k


def test_registry_replica_equals_the_trainer(tmp_path):
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(2000, seed=1, drift=True))
    reg = Registry(tmp_path / "reg")
    online = OnlineTrainer(config_from_dict(RAW), log, run_dir=tmp_path / "run", registry=reg)
    replica = None
    sub = Subscriber(reg)
    for _ in range(12):  # interleave training, publishing and a subscriber catching up
        online.step()
        time.sleep(0.02)
        if reg.head() is not None:
            if replica is None:
                replica = sub.materialize()
                sub = Subscriber(reg)
                sub.update(replica.tables)
            else:
                sub.update(replica.tables, replica.dense.update)
    online.run(idle_timeout_s=0.0)
    assert len(reg.versions()) > 3
    meta = reg.manifest().meta  # progress travels with each version (the demo shows it)
    assert meta["examples"] == online.trainer.examples == 2000
    assert meta["metrics"]["auc"] == pytest.approx(online.trainer.metrics.get()["auc"])
    assert reg.manifest(reg.versions()[0]).meta["examples"] < 2000
    assert online.trainer.tables["item"].stats().expired > 0  # expiry travelled in deltas
    sub.update(replica.tables, replica.dense.update)
    for name, table in online.trainer.tables.items():
        mine = dict(zip(*_rows(table), strict=True))
        theirs = dict(zip(*_rows(replica.tables[name]), strict=True))
        assert mine == theirs, name
    for k, v in online.trainer.model.state_dict().items():
        assert torch.equal(v, replica.dense[k]), k


def test_malformed_examples_are_counted_and_skipped(tmp_path):
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(100) + [b"not json", b"[1, 2]"] + _examples(100, seed=2, t0=100))
    online = OnlineTrainer(config_from_dict(RAW), log, run_dir=tmp_path / "run")
    summary = online.run(idle_timeout_s=0.0)
    assert summary["examples"] == 200 and summary["rejected"] == 2


def test_frozen_tables_and_warmup(tmp_path):
    raw = {**RAW, "online": {**RAW["online"], "frozen_tables": ["user"],
                             "embedding_warmup_steps": 3}}
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(1000))
    online = OnlineTrainer(config_from_dict(raw), log, run_dir=tmp_path / "run")
    online.step()  # 200 records = 4 steps of 64: 3 frozen, then item rows move
    user, item = online.trainer.tables["user"], online.trainer.tables["item"]
    fresh = OnlineTrainer(config_from_dict(raw), log, run_dir=tmp_path / "fresh").trainer
    init_user = fresh.tables["user"].lookup(np.array(*_rows(user)[:1], np.uint64), now=0,
                                            train=True)
    np.testing.assert_array_equal(np.array(_rows(user)[1], np.float32), init_user)
    assert item.stats().version >= 1 and online.trainer.step == 4
    fids, vals = _rows(item)
    init_item = fresh.tables["item"].lookup(np.array(fids, np.uint64), now=0, train=True)
    assert not np.array_equal(np.array(vals, np.float32), init_item)


@pytest.mark.redis
def test_redis_outage_is_retried_without_losing_examples(tmp_path):
    proc, port = start_redis(tmp_path, None, "--appendonly", "yes", "--appendfsync", "always",
                             "--save", "")
    spec = f"redis://127.0.0.1:{port}/0#examples"
    try:
        log = open_log(spec)
        log.append(_examples(600))
        online = OnlineTrainer(config_from_dict(RAW), open_log(spec), run_dir=tmp_path / "run")
        online.step()
        assert online.trainer.examples == 200
        proc.kill()  # the server dies (kill -9) while the trainer runs
        proc.wait()
        result = {}
        worker = threading.Thread(target=lambda: result.update(online.run(idle_timeout_s=1.0)))
        worker.start()
        deadline = time.monotonic() + 60
        while online.source_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert online.source_errors > 0 and worker.is_alive()  # retrying, not crashed
        proc, _ = start_redis(tmp_path, port, "--appendonly", "yes", "--appendfsync", "always",
                              "--save", "")
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert result["examples"] == 600 and result["offsets"] == online.offsets
        assert online.lag() == 0
    finally:
        proc.kill()
        proc.wait()
