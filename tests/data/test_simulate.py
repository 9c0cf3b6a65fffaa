"""Simulator: determinism, realism knobs, true probabilities, writing to a log."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
import redis

from freshrec.data.obd_replay import open_bandit_events
from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig, write_to_log
from freshrec.errors import ConfigError, InputError
from freshrec.stream import FileLog, FileLogConfig
from freshrec.stream import events as ev
from tests.conftest import DURABLE, start_redis

CFG = SimulatorConfig(seed=7, n_users=300, n_items=400, candidates=30, requests_per_s=50.0,
                      duplicate_rate=0.05, malformed_rate=0.02)


def _events(cfg=CFG, n=600):
    return list(ClickStreamSimulator(cfg).records(n_requests=n))


def test_same_seed_same_stream_other_seed_other_stream():
    a, b = _events(), _events()
    assert a == b
    c = _events(SimulatorConfig(**{**CFG.__dict__, "seed": 8}))
    assert a != c


def test_stream_shape_duplicates_malformed_and_delays():
    recs = _events()
    good, bad = [], 0
    for _, r in recs:
        try:
            e = ev.decode(r)
            ev.validate_event(e)
            good.append(e)
        except InputError:
            bad += 1
    imps = [e for e in good if e["type"] == "impression"]
    acts = [e for e in good if e["type"] == "action"]
    assert len({e["request_id"] for e in imps}) == 600
    assert all(len(e["candidates"]) == 30 for e in imps)
    assert all(len({c["item_id"] for c in e["candidates"]}) == 30 for e in imps)
    assert bad > 0
    ids = [e["event_id"] for e in good]
    assert len(ids) > len(set(ids))  # duplicate deliveries
    imp_ts = {e["request_id"]: e["timestamp"] for e in imps}
    delays = np.array([a["timestamp"] - imp_ts[a["request_id"]] for a in acts
                       if a["action"] == "click"])
    assert (delays > -0.001).all() and np.median(delays) < 30 and delays.max() > 60
    assert {a["action"] for a in acts} == {"click", "purchase"}
    ts = [e["timestamp"] for e in good]
    assert any(x > y for x, y in zip(ts, ts[1:], strict=False))  # out of order deliveries


def test_clicks_follow_the_true_probability():
    recs = _events(SimulatorConfig(**{**CFG.__dict__, "duplicate_rate": 0.0,
                                      "late_click_rate": 0.0}), n=1500)
    evs = [ev.decode(r) for _, r in recs if r[:1] == b"{"]
    clicked = {(e["request_id"], e["item_id"]) for e in evs
               if e.get("type") == "action" and e.get("action") == "click"}
    ps, ys = [], []
    for e in evs:
        if e.get("type") == "impression":
            for c in e["candidates"]:
                ps.append(c["true_p"])
                ys.append((e["request_id"], c["item_id"]) in clicked)
    ps, ys = np.array(ps), np.array(ys)
    assert abs(ys.mean() - ps.mean()) < 0.2 * ps.mean()
    hi = ps > np.quantile(ps, 0.9)
    assert ys[hi].mean() > 2 * ys[~hi].mean()  # the probability is informative


def test_items_churn_and_users_appear():
    cfg = SimulatorConfig(**{**CFG.__dict__, "new_items_per_s": 5.0, "item_churn_per_s": 5.0,
                             "new_users_per_s": 5.0})
    imps = [ev.decode(r) for _, r in _events(cfg, n=1500) if b'"impression"' in r]
    last = {c["item_id"] for e in imps[-100:] for c in e["candidates"]}
    assert max(last) >= cfg.n_items  # new items were shown
    # new users (ids past the initial population) are added once a second: none in the
    # first second, then many (5 a second over about 30 s)
    start = imps[0]["timestamp"]
    assert all(e["user_id"] < cfg.n_users for e in imps if e["timestamp"] < start + 1.0)
    assert len({e["user_id"] for e in imps if e["user_id"] >= cfg.n_users}) >= 10


def test_write_to_log_partitions_by_request(tmp_path):
    log = FileLog(tmp_path, FileLogConfig(partitions=3, fsync="never"))
    n = write_to_log(ClickStreamSimulator(CFG).records(n_requests=100), log, batch=50)
    assert n == sum(log.end_offset(p) for p in range(3))
    for p in range(3):
        for r in log.read(p, 0, 10_000):
            if r.value[:1] == b"{":
                e = orjson.loads(r.value)
                if "request_id" in e:
                    assert ev.partition_for(e["request_id"], 3) == p
    log.close()


@pytest.mark.redis
def test_simulate_survives_a_redis_restart(tmp_path):
    # `freshrec simulate` into Redis; the server is killed (kill -9) mid-way and comes back
    # on the same port a second later: the run ends normally with every event written once
    proc, port = start_redis(tmp_path, None, *DURABLE)
    spec = f"redis://127.0.0.1:{port}/0#sim"
    try:
        sim = subprocess.Popen(
            [sys.executable, "-m", "freshrec.cli", "simulate", "--log", spec, "--events",
             "6000", "--rate", "3000", "--no-progress"],
            cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        r = redis.Redis(port=port)
        while (r.exists("{sim:p0}") and r.xlen("{sim:p0}")) < 1000:
            time.sleep(0.01)
            assert sim.poll() is None, sim.communicate()
        proc.kill()
        proc.wait()
        time.sleep(1.0)
        proc, _ = start_redis(tmp_path, port, *DURABLE)
        out, err = sim.communicate(timeout=120)
        assert sim.returncode == 0, err
        assert "lost the server" in err and "wrote 6000 events" in err
        assert r.xlen("{sim:p0}") == 6000  # none lost, none twice
        r.close()
    finally:
        proc.kill()
        proc.wait()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="candidates must be <= n_items"):
        SimulatorConfig(n_items=10, candidates=20)
    with pytest.raises(ConfigError, match="duplicate_rate must be a number in"):
        SimulatorConfig(duplicate_rate=2)


def test_open_bandit_replay_in_time_order(shared_data):
    recs = [ev.decode(r) for _, r in open_bandit_events(shared_data / "obd" / "random" / "all")]
    imps = [e for e in recs if e["type"] == "impression"]
    acts = [e for e in recs if e["type"] == "action"]
    assert len(imps) == 10_000 and len(acts) > 0
    ts = [e["timestamp"] for e in recs]
    assert ts == sorted(ts)
    for e in recs:
        ev.validate_event(e)


def test_simulated_examples_flatten_the_stream_with_its_clicks():
    from freshrec.data.simulate import simulated_examples
    from freshrec.stream.events import decode

    cfg = SimulatorConfig(seed=4, n_users=100, n_items=80, candidates=6, bias=-1.0,
                          duplicate_rate=0.05, malformed_rate=0.01, context_effects=(1.0,))
    table = simulated_examples(cfg, n_requests=200)
    assert table.num_rows == 200 * 6  # duplicates and malformed deliveries are not examples
    clicked = set()
    for _, payload in ClickStreamSimulator(cfg).records(n_requests=200):
        try:
            ev = decode(payload)
        except InputError:
            continue
        if ev.get("type") == "action" and ev.get("action") == "click":
            clicked.add((ev["request_id"], ev["item_id"]))
    assert table.column("click").to_numpy().sum() == len(clicked) > 0
    assert (np.diff(table.column("event_time").to_numpy()) >= 0).all()
    assert "u_ctx0" in table.column_names and "true_p" in table.column_names
