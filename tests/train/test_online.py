from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import orjson
import pyarrow as pa
import pytest
import torch
import yaml

from freshrec.cli import main
from freshrec.config import config_from_dict
from freshrec.stream.events import encode_examples
from freshrec.stream.open import open_log
from freshrec.sync import Registry, Subscriber
from freshrec.train.online import OnlineTrainer
from tests.conftest import DURABLE, start_redis

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
    r = table.read_rows()
    return r.fids.tolist(), r.values.tolist()


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
    assert again.trainer.metrics.get()["count"] == 7 * 200  # with the metrics of that point
    summary = again.run(idle_timeout_s=0.0)
    assert summary["offsets"] == {0: 3000}
    assert again.trainer.examples == ref.trainer.examples == 3000  # none lost, none twice
    t_ref, d_ref = _state(ref.trainer)
    t_again, d_again = _state(again.trainer)
    assert t_ref == t_again
    for k in d_ref:
        assert torch.equal(d_ref[k], d_again[k]), k
    # the progressive metrics are those of the uninterrupted run, not of the last 1600
    metrics = again.trainer.metrics.get()
    assert metrics["count"] == 3000
    assert metrics == pytest.approx(ref.trainer.metrics.get(), rel=1e-9, nan_ok=True)


def test_a_run_publishes_everything_when_it_stops_and_resumes_its_metrics(tmp_path):
    # dense parameters are due every 1000 s: only the publish at the stop carries the trained
    # ones; a resumed run goes on publishing the progressive metrics of the whole stream
    raw = {**RAW, "sync": {**RAW["sync"], "dense_interval_s": 1000.0}}
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(1200))
    reg = Registry(tmp_path / "reg")
    first = OnlineTrainer(config_from_dict(raw), log, run_dir=tmp_path / "run", registry=reg)
    first.run(idle_timeout_s=0.0, max_examples=600)
    assert reg.manifest().meta["metrics"]["count"] == 600
    _assert_replica_equals(first, Subscriber(reg).materialize())
    again = OnlineTrainer(config_from_dict(raw), log, run_dir=tmp_path / "run", registry=reg)
    again.run(idle_timeout_s=0.0)
    meta = reg.manifest().meta
    assert meta["examples"] == 1200 and meta["metrics"]["count"] == 1200
    assert meta["metrics"]["auc"] == pytest.approx(again.trainer.metrics.get()["auc"])
    _assert_replica_equals(again, Subscriber(reg).materialize())
    versions = len(reg.versions())
    again.run(idle_timeout_s=0.0)  # nothing new: the dense parameters are not published again
    assert len(reg.versions()) == versions


def _assert_replica_equals(online, replica):
    """A registry replica holds the trainer's tables and dense parameters."""
    for name, table in online.trainer.tables.items():
        assert dict(zip(*_rows(table), strict=True)) == \
            dict(zip(*_rows(replica.tables[name]), strict=True)), name
    for k, v in online.trainer.model.state_dict().items():
        assert torch.equal(v, replica.dense[k]), k


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
    _assert_replica_equals(online, replica)


def _example_records(n_records: int, per_record: int = 50) -> list[bytes]:
    """Joined-example records as the joiner writes them: ``per_record`` examples in each."""
    rows = [orjson.loads(e) for e in _examples(n_records * per_record)]
    return [encode_examples(pa.RecordBatch.from_pylist(rows[i:i + per_record]))
            for i in range(0, len(rows), per_record)]


@pytest.mark.redis
def test_lag_counts_records_of_a_redis_log(tmp_path, redis_server):
    log = open_log(f"{redis_server}#lag{time.monotonic_ns()}")
    log.append(_example_records(20))
    online = OnlineTrainer(config_from_dict(RAW), log, run_dir=tmp_path / "run")
    assert online.lag() == 20  # records (offsets are sparse: not end_offset - offset)
    online.step()
    assert online.trainer.examples == 1000 and online.lag() == 0


@pytest.mark.parametrize("kind", ["file", pytest.param("redis", marks=pytest.mark.redis)])
def test_online_cli_reports_its_lag_in_records(tmp_path, capsys, request, kind):
    # two partitions, which the CLI finds without being told
    spec = (f"file:{tmp_path / 'log'}" if kind == "file" else
            f"{request.getfixturevalue('redis_server')}#cli{time.monotonic_ns()}")
    log = open_log(spec, partitions=2)
    records = _example_records(20)
    log.append(records[:10], partition=0)
    log.append(records[10:], partition=1)
    log.close()
    cfg = tmp_path / "online.yaml"
    cfg.write_text(yaml.safe_dump(RAW))
    assert main(["train", "--online", "--config", str(cfg), "--source", spec,
                 "--run-dir", str(tmp_path / "run"), "--idle-timeout", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "lag 20 records" in out and '"examples": 1000' in out


def _failing(fn, times: int):
    """``fn`` that raises "no space left on device" on its first ``times`` calls."""
    calls = [0]

    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= times:
            raise OSError(errno.ENOSPC, "No space left on device")
        return fn(*args, **kwargs)

    return call


def test_a_failed_checkpoint_or_publish_is_not_an_unreachable_log(tmp_path, caplog,
                                                                  monkeypatch):
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(1000))
    reg = Registry(tmp_path / "reg")
    online = OnlineTrainer(config_from_dict(RAW), log, run_dir=tmp_path / "run", registry=reg)
    monkeypatch.setattr(online.trainer, "save", _failing(online.trainer.save, 1))
    monkeypatch.setattr(online.publisher, "maybe_publish",
                        _failing(online.publisher.maybe_publish, 2))
    summary = online.run(idle_timeout_s=0.0)  # the disk fills up, then has room again
    assert summary["examples"] == 1000 and summary["source_errors"] == 0
    assert summary["write_errors"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert not any("unreachable" in w for w in warnings)
    assert sum(f"checkpoint under {tmp_path / 'run'} failed" in w for w in warnings) == 1
    assert sum(f"publish to registry {reg.root} failed" in w for w in warnings) == 2
    assert reg.manifest().meta["examples"] == 1000
    # at the stop a failed write is raised, naming where it went
    log.append(_examples(100, t0=300))
    monkeypatch.setattr(online.publisher, "publish_sparse",
                        _failing(online.publisher.publish_sparse, 1))
    with pytest.raises(OSError, match="No space left"):
        online.run(idle_timeout_s=0.0)
    assert f"publish to registry {reg.root} failed when stopping" in caplog.text


def test_malformed_examples_are_counted_and_skipped(tmp_path):
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(100) + [b"not json", b"[1, 2]"] + _examples(100, seed=2, t0=100))
    online = OnlineTrainer(config_from_dict(RAW), log, run_dir=tmp_path / "run")
    summary = online.run(idle_timeout_s=0.0)
    assert summary["examples"] == 200 and summary["rejected"] == 2


def test_examples_with_labels_out_of_range_are_rejected_row_by_row(tmp_path):
    """An examples record whose rows hold a NaN or a 2.0 click: those rows are counted and
    skipped, the other rows of their batch and every other record are trained on (a NaN
    label stopped the trainer in its AUC)."""
    bad = pa.RecordBatch.from_pylist([
        {"user_id": 1, "item_id": 2, "click": float("nan"), "event_time": 30, "sample_rate": 1.0},
        {"user_id": 1, "item_id": 3, "click": 1.0, "event_time": 30, "sample_rate": 1.0},
        {"user_id": 2, "item_id": 2, "click": 2.0, "event_time": 30, "sample_rate": 1.0}])
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(100) + [encode_examples(bad)] + _examples(100, seed=2, t0=100))
    online = OnlineTrainer(config_from_dict(RAW), log, run_dir=tmp_path / "run")
    summary = online.run(idle_timeout_s=0.0)
    assert summary["examples"] == 201 and summary["rejected"] == 2
    assert np.isfinite(summary["logloss"])



def test_examples_with_unbounded_dense_values_are_rejected_row_by_row(tmp_path):
    """A dense value that is an infinity (Arrow holds one; JSON cannot) or normalises past
    float32's range reached the model as an infinity, whose output was NaN: the trainer
    stopped at its AUC, at every restart. Those rows are counted and skipped."""
    raw = {**RAW, "features": {**RAW["features"], "dense": {"x": {"norm": "none"}}}}
    rows = [{"user_id": u, "item_id": u % 7, "x": x, "click": float(u % 2), "event_time": 30,
             "sample_rate": 1.0}
            for u, x in enumerate([0.5, float("inf"), -1.0, 1e300, float("-inf"), 2.0])]
    log = open_log(f"file:{tmp_path / 'log'}")
    log.append(_examples(100) + [encode_examples(pa.RecordBatch.from_pylist(rows))]
               + _examples(100, seed=2, t0=100))
    online = OnlineTrainer(config_from_dict(raw), log, run_dir=tmp_path / "run")
    summary = online.run(idle_timeout_s=0.0)
    assert summary["examples"] == 203 and summary["rejected"] == 3
    assert np.isfinite(summary["logloss"])
    assert all(torch.isfinite(p).all() for p in online.trainer.model.parameters())

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
    proc, port = start_redis(tmp_path, None, *DURABLE)
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
        worker = threading.Thread(target=lambda: result.update(online.run(idle_timeout_s=1.0)),
                                  daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while online.source.reconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert online.source.reconnects > 0 and worker.is_alive()  # retrying, not crashed
        proc, _ = start_redis(tmp_path, port, *DURABLE)
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert result["examples"] == 600 and result["offsets"] == online.offsets
        assert online.lag() == 0
    finally:
        proc.kill()
        proc.wait()
