"""Each alert rule fires on a generated series that breaks it and stays quiet on one that does
not; alerts reach a real local HTTP receiver, retried when it fails; freshrec watch end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from freshrec._retry import Backoff
from freshrec.config import config_from_dict
from freshrec.ops.alerts import Watcher, WebhookSink, evaluate
from freshrec.ops.collect import Collector
from freshrec.ops.config import AlertRule
from tests.ops.conftest import ROOT, model_doc

SLOTS = ["user_id", "item_id"]
RULES = {
    "auc_drop": AlertRule(name="auc", kind="auc_drop", threshold=0.02, window_s=600),
    "calibration_range": AlertRule(name="cal", kind="calibration_range", low=0.8, high=1.2),
    "importance_change": AlertRule(name="imp", kind="importance_change", threshold=0.5),
    "coverage_drop": AlertRule(name="cov", kind="coverage_drop", threshold=0.1, window_s=600),
    "joiner_lag": AlertRule(name="lag", kind="joiner_lag", threshold=30),
    "freshness_p99": AlertRule(name="fresh", kind="freshness_p99", threshold=10, window_s=300),
}


def _noise(base: float, scale: float, n: int, seed: int) -> list[float]:
    return list(base + np.random.default_rng(seed).uniform(-scale, scale, n))


def _series(kind: str, broken: bool, seed: int) -> dict[str, list[list[float]]]:
    """A generated series for ``kind``: noise within the rule's limits, plus (``broken``) a
    change that breaks it at the end."""
    t = [60.0 * i for i in range(20)]
    if kind == "auc_drop":
        v = _noise(0.75, 0.008, 20, seed)  # wiggles at most 0.016 < 0.02
        if broken:
            v[-1] = 0.70
        return {"online.auc_window": [[x, y] for x, y in zip(t, v, strict=True)]}
    if kind == "calibration_range":
        v = _noise(1.0, 0.15, 20, seed)
        if broken:
            v[-1] = 1.35
        return {"online.calibration_window": [[x, y] for x, y in zip(t, v, strict=True)]}
    if kind == "importance_change":
        out = {}
        for j, s in enumerate(SLOTS):  # three running estimates per window
            v = [(1.0 + j) * x for x in _noise(1.0, 0.1, 5, seed + j)]  # changes < 23 %
            if broken and s == "item_id":
                v[-1] = 2.0 * v[-2]
            out[f"slot.{s}.importance"] = [[600.0 * w, v[w] * (0.9 + 0.05 * k)]
                                           for w in range(5) for k in range(3)]
        return out
    if kind == "coverage_drop":
        out = {}
        for j, s in enumerate(SLOTS):
            v = _noise(0.9, 0.04, 20, seed + j)
            if broken and s == "user_id":
                v[-1] = 0.6
            out[f"slot.{s}.coverage"] = [[x, y] for x, y in zip(t, v, strict=True)]
        return out
    if kind == "joiner_lag":
        v = _noise(12.0, 8.0, 20, seed)
        if broken:
            v[-1] = 45.0
        return {"join.lag_s": [[x, y] for x, y in zip(t, v, strict=True)]}
    v = _noise(3.0, 2.0, 100, seed)  # freshness: scraped every 5 s
    if broken:
        v[-3:] = [14.0, 15.0, 16.0]
    return {"serve.freshness_s": [[5.0 * i, y] for i, y in enumerate(v)]}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", sorted(RULES))
def test_rule_fires_on_a_broken_series_only(kind: str, seed: int) -> None:
    rule = RULES[kind]
    assert evaluate(rule, _series(kind, False, seed), slots=SLOTS) == []
    fired = evaluate(rule, _series(kind, True, seed), slots=SLOTS)
    assert len(fired) == 1, fired
    assert fired[0].rule == rule.name and fired[0].kind == kind
    if kind == "coverage_drop":
        assert fired[0].subject == "user_id"
    if kind == "importance_change":
        assert fired[0].subject == "item_id"


def _alert() -> Any:
    return evaluate(RULES["joiner_lag"], _series("joiner_lag", True, 0), slots=SLOTS)[0]


def test_webhook_delivery_is_retried(receiver: Any) -> None:
    receiver.fail_first = 2
    waits: list[float] = []
    sink = WebhookSink(receiver.url, retries=3, backoff=Backoff(first_s=0.1, cap_s=1.0),
                       sleep=waits.append)
    assert sink.send(_alert(), "firing")
    assert receiver.attempts == 3 and waits == [0.1, 0.2]
    assert receiver.bodies[0]["state"] == "firing"
    assert receiver.bodies[0]["alert"]["rule"] == "lag"
    assert (sink.delivered, sink.failed_attempts, sink.undelivered) == (1, 2, 0)


def test_webhook_gives_up_after_its_retries(receiver: Any) -> None:
    receiver.fail_first = 10
    sink = WebhookSink(receiver.url, retries=2, sleep=lambda s: None)
    assert not sink.send(_alert(), "firing")
    assert receiver.attempts == 2 and sink.undelivered == 1
    down = WebhookSink("http://127.0.0.1:9/alerts", retries=2, sleep=lambda s: None)
    assert not down.send(_alert(), "firing")  # nobody listens: connection refused, counted
    assert down.failed_attempts == 2


def _window_lines(run: Path, aucs: list[float]) -> None:
    with open(run / "metrics.jsonl", "w") as fh:
        for i, a in enumerate(aucs):
            fh.write(json.dumps({"kind": "window", "event_time": 60 * i, "auc_window": a,
                                 "calibration_window": 1.0,
                                 "slots": {s: {"coverage": 0.9, "distinct": 5} for s in SLOTS},
                                 "tables": {}}) + "\n")


def test_watcher_fires_once_and_resolves(receiver: Any, tmp_path: Path) -> None:
    doc = model_doc(SLOTS, ops={"webhook": receiver.url, "alerts": [
        {"name": "auc", "kind": "auc_drop", "threshold": 0.02, "window_s": 600}]})
    cfg = config_from_dict(doc)
    _window_lines(tmp_path, [0.75, 0.75, 0.70])
    w = Watcher(cfg, Collector(cfg, run_dirs=[tmp_path]))
    assert [a.rule for a in w.check()] == ["auc"]
    assert w.check() == []  # still firing: not sent again
    _window_lines(tmp_path, [0.75, 0.75, 0.70] + [0.70] * 11)  # the drop left the window
    assert w.check() == []
    assert [b["state"] for b in receiver.bodies] == ["firing", "resolved"]


def test_freshrec_watch_once(receiver: Any, tmp_path: Path) -> None:
    doc = model_doc(SLOTS, ops={"webhook": receiver.url, "alerts": [
        {"name": "cal", "kind": "calibration_range", "low": 0.9, "high": 1.1}]})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    _window_lines(tmp_path, [0.75, 0.75])
    args = [sys.executable, "-m", "freshrec.cli", "watch", "--config", str(cfg), "--run-dir",
            str(tmp_path), "--once"]
    quiet = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["active"] == []
    assert receiver.bodies == []
    args[args.index(str(cfg))] = str(_with_range(tmp_path, doc, 1.05))
    broken = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert broken.returncode == 1, broken.stderr
    assert json.loads(broken.stdout)["active"][0]["rule"] == "cal"
    assert "ALERT rule=cal" in broken.stderr
    assert receiver.bodies[0]["alert"]["message"].startswith("calibration_window 1.0000 outside")


def _with_range(tmp_path: Path, doc: dict[str, Any], low: float) -> Path:
    doc = json.loads(json.dumps(doc))
    doc["ops"]["alerts"][0]["low"] = low
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
