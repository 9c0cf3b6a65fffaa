"""The serving AUC from the live system's logs, and the live rollback.

Unit level: the served scores of the impressions are joined with the labels of the joined
examples (older impressions without scores counted, not guessed), and fed to the guard
window by window. End to end with real processes: ``freshrec serve`` on loopback serving a
registry, simulated users' requests and clicks (the demo's driver), ``freshrec join`` and
``freshrec watch``; a slightly perturbed version is published and not rolled back, then a
version whose scores are inverted is, to the last good version, which the server then serves,
with the alert in the log and at a real webhook receiver.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import yaml

from freshrec.ops.config import RollbackConfig
from freshrec.ops.rollback import RollbackGuard
from freshrec.ops.serving import ServedScores, ServingMonitor, serving_windows
from freshrec.stream.events import (
    decode,
    encode_examples,
    examples_to_record_batch,
    partition_for,
)
from freshrec.stream.open import open_log
from freshrec.train.metrics import AUC

ROOT = Path(__file__).resolve().parents[2]


def _imp(rid: str, t: float, version: int | None, scores: list[float] | None,
         n: int) -> bytes:
    ev: dict[str, Any] = {"v": 1, "type": "impression", "event_id": f"i-{rid}",
                          "request_id": rid, "user_id": 1, "timestamp": t, "user": {},
                          "candidates": [{"item_id": j, "position": j} for j in range(n)]}
    if version is not None:
        ev["model_version"] = version
    if scores is not None:
        ev["scores"] = scores
    return orjson.dumps(ev)


def _examples(rows: list[dict[str, Any]]) -> bytes:
    return encode_examples(examples_to_record_batch(rows))


def test_served_scores_are_joined_with_the_labels(tmp_path: Path) -> None:
    ev, ex = open_log(f"file:{tmp_path}/ev", partitions=2), open_log(f"file:{tmp_path}/ex")
    ev.append([_imp("a", 100.2, 4, [0.9, 0.1, 0.4], 3),
               _imp("old", 100.5, 4, None, 2)], partition=0)  # an older server: no scores
    ev.append([orjson.dumps({"type": "action", "request_id": "a", "item_id": 0,
                             "action": "click", "timestamp": 101.0})], partition=1)
    ex.append([_examples([
        {"request_id": "a", "position": 0, "event_time": 100, "click": 1.0},
        {"request_id": "a", "position": 2, "event_time": 100, "click": 0.0},  # 1 sampled out
        {"request_id": "old", "position": 0, "event_time": 100, "click": 0.0},
    ])])
    s = ServedScores(f"file:{tmp_path}/ev", f"file:{tmp_path}/ex", "click", horizon_s=50)
    got = s.poll()
    assert got.scores.tolist() == [0.9, 0.4] and got.labels.tolist() == [1.0, 0.0]
    assert got.versions.tolist() == [4, 4] and got.event_time.tolist() == [100.0, 100.0]
    assert (s.unscored, s.unmatched, s.matched) == (1, 1, 2)
    assert len(s.poll()) == 0  # nothing new
    # an impression arriving later is found by its examples later; old ones are forgotten
    ev.append([_imp("b", 200.0, 5, [0.3], 1)], partition=0)
    ex.append([_examples([{"request_id": "b", "position": 0, "event_time": 200,
                           "click": 1.0}])])
    got = s.poll()
    assert got.scores.tolist() == [0.3] and got.versions.tolist() == [5]
    assert s.pending == 1  # "a" (100.2) is older than 200 - 50


def test_impressions_with_scores_keep_the_joiners_fast_path() -> None:
    """The server's impression record with its scores: the joiner's kernel still parses its
    candidates (numpy columns, which only the kernel path builds above 8 candidates), and
    the scores are in the event as the server answered them (float32)."""
    from freshrec.serve.impressions import impression_record
    from freshrec.serve.request import ScoreRequest
    from freshrec.stream.events import decode_events

    req = ScoreRequest(request_id="r", user={"a": 1}, user_id=3,
                       candidates=[{"item_id": i, "c": i % 3} for i in range(12)])
    scores = np.linspace(0.01, 0.9, 12, dtype=np.float32)
    [(ev, kind, imp)] = decode_events([impression_record(req, 2, 5.0, scores)])
    assert kind == "impression" and isinstance(imp.items, np.ndarray)
    assert imp.items.tolist() == list(range(12))
    assert np.float32(ev["scores"]).tolist() == scores.tolist() and ev["model_version"] == 2


def test_monitor_measures_the_auc_of_each_window(tmp_path: Path) -> None:
    """Examples of three windows (two versions in the second) come out of order; the AUC of
    each closed window is the AUC of its examples, its version the one that served most."""
    rng = np.random.default_rng(3)
    ev, ex = open_log(f"file:{tmp_path}/ev"), open_log(f"file:{tmp_path}/ex")
    truth: dict[int, tuple[list[float], list[float]]] = {}
    imps, rows = [], []
    for k in range(60):
        w = k % 3
        t = 60.0 * w + rng.random() * 59
        version = 1 if w == 0 or (w == 1 and k % 4 == 1) else 2
        scores = rng.random(10).round(6).tolist()
        labels = (rng.random(10) < np.asarray(scores) * 0.6).astype(float).tolist()
        imps.append(_imp(f"r{k}", t, version, scores, 10))
        rows += [{"request_id": f"r{k}", "position": j, "event_time": int(t),
                  "click": labels[j]} for j in range(10)]
        truth.setdefault(w, ([], []))
        truth[w][0].extend(scores)
        truth[w][1].extend(labels)
    ev.append(imps)
    ex.append([_examples(rows)])
    mon = ServingMonitor(ServedScores(f"file:{tmp_path}/ev", f"file:{tmp_path}/ex", "click"),
                         RollbackGuard(RollbackConfig(enabled=True, min_examples=10), None))
    assert mon.poll() == 600
    series = mon.series()
    assert [p[0] for p in series["serve.auc"]] == [0.0, 60.0]  # the third is still open
    for w, (_, auc) in enumerate(series["serve.auc"]):
        m = AUC()
        m.update(np.asarray(truth[w][1]), np.asarray(truth[w][0]))
        assert auc == pytest.approx(m.get(), abs=1e-9), w
    assert [p[1] for p in series["serve.auc_version"]] == [1.0, 2.0]
    # what freshrec report reads: the same windows from the config's join logs
    from freshrec.config import config_from_dict
    from tests.ops.conftest import model_doc

    cfg = config_from_dict(model_doc(["item_id"], join={
        "source": f"file:{tmp_path}/ev", "output": f"file:{tmp_path}/ex"},
        ops={"rollback": {"min_examples": 10}}))
    assert serving_windows(cfg) == mon.guard.history


# -- end to end ----------------------------------------------------------------------------
def _document(tmp: Path, port: int, webhook: str) -> dict[str, Any]:
    """configs/demo.yaml with a Wide & Deep model (its logit can be negated exactly), a
    small simulated world, short join and rollback windows, and this run's paths."""
    doc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    doc.pop("demo")
    events, examples = f"file:{tmp / 'events'}", f"file:{tmp / 'examples'}"
    doc["model"] = {"kind": "wide_deep", "mlp": [16]}
    # a small world with a strong position effect: a model trained for seconds ranks well
    doc["simulate"].update(requests_per_s=40, start_time=int(time.time()) - 7200,
                           n_users=200, n_items=100, position_decay=0.2)
    doc["join"] = {"source": events, "output": examples, "state": str(tmp / "join"),
                   "window_s": 2, "allowed_lateness_s": 1, "idle_timeout_s": float("inf")}
    doc["serve"] = {"registry": str(tmp / "registry"), "log": events, "port": port,
                    "threads": 1, "poll_interval_s": 0.5}
    doc["ops"] = {"webhook": webhook, "watch_interval_s": 1.0,
                  "rollback": {"enabled": True, "window_s": 4, "min_examples": 800,
                               "max_auc_drop": 0.05, "patience": 2}}
    return doc


def _variant(state: dict[str, torch.Tensor], how: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The dense state with its logit negated (``invert``: the wide unit and the MLP's last
    layer, so every ranking is reversed) or each weight perturbed by 0.5 % (``noise``)."""
    out = {k: v.clone() for k, v in state.items()}
    if how == "noise":
        g = torch.Generator().manual_seed(seed)
        for v in out.values():
            if v.is_floating_point():
                v.mul_(1 + 0.005 * torch.randn(v.shape, generator=g))
        return out
    last = max((k for k in out if re.fullmatch(r"deep\.\d+\.weight", k)),
               key=lambda k: int(k.split(".")[1]))
    for k in ("wide.weight", "wide.bias", last, last.replace("weight", "bias")):
        out[k].neg_()
    return out


def _served_version(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        m = re.search(r"^freshrec_model_version (\S+)$", conn.getresponse().read().decode(),
                      re.M)
        return int(float(m.group(1))) if m else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _wait(what: str, ok: Any, children: list[Any], timeout_s: float) -> None:
    from freshrec.demo.processes import wait_for

    wait_for(what, ok, children, timeout_s)


@pytest.mark.slow
def test_live_rollback_of_a_bad_version(tmp_path: Path, receiver: Any) -> None:
    from freshrec.config import config_from_dict
    from freshrec.data.simulate import simulated_examples
    from freshrec.demo.processes import ChildProcess, free_port, stop_all
    from freshrec.demo.traffic import TrafficDriver
    from freshrec.sync import Publisher, Registry
    from freshrec.train.trainer import Trainer

    port = free_port()
    doc = _document(tmp_path, port, f"http://127.0.0.1:{receiver.server_address[1]}/hook")
    cfg = config_from_dict(doc)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    # v1: trained on the simulator's world; v2: v1 perturbed (noise, within the threshold)
    trainer = Trainer(cfg)
    trainer.fit(simulated_examples(cfg.simulate, 400).to_batches(max_chunksize=4096))
    good = trainer.model.state_dict()
    reg = Registry(tmp_path / "registry")
    meta = {"config": dict(cfg.raw)}
    Publisher(reg, trainer.tables, lambda: good).publish_full(event_time=1, meta=meta)
    open_log(doc["join"]["source"], partitions=2).close()
    open_log(doc["join"]["output"]).close()
    proc = tmp_path / "proc"
    proc.mkdir()
    server = ChildProcess("serve", ["serve", "--config", str(cfg_path)], proc / "serve.log")
    joiner = ChildProcess("join", ["join", "--config", str(cfg_path)], proc / "join.log")
    watch = ChildProcess("watch", ["-v", "watch", "--config", str(cfg_path), "--registry",
                                   str(reg.root)], proc / "watch.log")
    children = [server, joiner, watch]
    events = open_log(doc["join"]["source"])
    driver = TrafficDriver(f"http://127.0.0.1:{port}", events, cfg.simulate,
                           cfg.join.window_s)
    try:
        for c in children:
            c.start()
        _wait("server", lambda: _served_version(port) == 1, children, 180)
        driver.start()

        def windows() -> list[dict[str, Any]]:
            return [json.loads(x) for x in re.findall(
                r"serving window (\{.*\})", (proc / "watch.log").read_text())]

        def judged(version: int, n: int) -> bool:
            return sum(1 for w in windows() if w["version"] == version
                       and w["good"] is not None) >= n

        _wait("3 judged windows of v1", lambda: judged(1, 3), children, 180)
        Publisher(reg, trainer.tables, lambda: _variant(good, "noise")).publish_full(
            event_time=2, meta=meta)
        _wait("3 judged windows of v2", lambda: judged(2, 3), children, 120)
        Publisher(reg, trainer.tables, lambda: _variant(good, "invert")).publish_full(
            event_time=3, meta=meta)
        _wait("a rollback", lambda: reg.head() == 4, children, 120)
        _wait("v4 served", lambda: _served_version(port) == 4, children, 60)
        _wait("2 judged windows of v4", lambda: judged(4, 2), children, 120)
        # a request scored now: its impression carries the scores it was answered (an id
        # the server writes to partition 0: the driver alone writes the clicks' partition)
        rid = next(r for r in (f"check-{k}" for k in range(100)) if partition_for(r, 2) == 0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = {"request_id": rid, "user_id": 1, "user": {"gender": 1},
                "candidates": [{"item_id": 3}, {"item_id": 5}]}
        conn.request("POST", "/score", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        answered = json.loads(conn.getresponse().read())
        conn.close()
    finally:
        driver.stop()
        stop_all(children)
        events.close()
    ws = windows()
    assert driver.error is None
    def aucs(version: int) -> list[float]:
        return [w["auc"] for w in ws if w["version"] == version and w["good"] is not None]

    # v1 and v2 (noise) served for 3+ judged windows each and were not rolled back: the
    # registry holds v1-v3 and the one rollback; v3's two windows were judged bad
    assert len(aucs(1)) >= 3 and len(aucs(2)) >= 3 and np.mean(aucs(1)) > 0.58, ws
    assert reg.versions() == [1, 2, 3, 4]
    bad = [w for w in ws if w["version"] == 3 and w["good"] is not None]
    assert len(bad) == 2 and not any(w["good"] for w in bad) and max(aucs(3)) < 0.5, ws
    assert np.mean(aucs(4)) > max(aucs(3)) + 0.1  # the restored version serves well again
    # the registry went back to the last good version (v2), the reason recorded
    m = reg.manifest(4)
    assert (m.kind.value, m.base, m.rolled_back_from) == ("rollback", 2, 3)
    assert "serving AUC" in m.meta["rollback_reason"]
    # the alert: in the watcher's log, and at the webhook (critical, names the versions)
    text = (proc / "watch.log").read_text()
    assert re.search(r"ALERT rule=auto_rollback .*rolled back to version 2", text), text[-3000:]
    hooks = [b for b in receiver.bodies if b["alert"]["rule"] == "auto_rollback"]
    assert len(hooks) == 1 and hooks[0]["state"] == "firing"
    assert hooks[0]["alert"]["severity"] == "critical"
    assert "rolled back to version 2" in hooks[0]["alert"]["message"]
    # the check request's impression carries what the server answered, with its version
    imps = [decode(r.value) for r in open_log(doc["join"]["source"]).read(0, 0, 10**6)]
    mine = [e for e in imps if e.get("request_id") == rid]
    assert len(mine) == 1 and mine[0]["model_version"] == 4
    assert mine[0]["scores"] == pytest.approx(answered["scores"], abs=1e-6)
