"""The report's values from a generated run whose metrics are known, its change against the
previous report, and freshrec report end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from freshrec.config import config_from_dict
from freshrec.ops.report import build_report, render_html, render_markdown
from freshrec.sync.registry import Registry
from tests.ops.conftest import ROOT, model_doc, online_run

SLOTS = ["user_id", "item_id"]


def _generated_run(run: Path, now: float) -> None:
    lines = []
    for i in range(6):  # six windows of the last hour, known values
        lines.append({"kind": "window", "event_time": 1000 + 60 * i, "wall_unix_s": now - 3000
                      + 500 * i, "examples": 100 * (i + 1), "auc_window": 0.70 + 0.01 * i,
                      "calibration_window": 1.0 + 0.02 * i, "logloss_window": 0.4 - 0.01 * i,
                      "positive_ratio": 0.1 * (1 + i % 2),
                      "slots": {"user_id": {"coverage": 1.0, "distinct": 9},
                                "item_id": {"coverage": 0.9 - 0.1 * i, "distinct": 5}},
                      "tables": {}})
    lines.append({**lines[0], "wall_unix_s": now - 86400 * 3})  # outside the period
    for slot, v in (("user_id", 2.0), ("item_id", 0.5)):
        lines.append({"kind": "importance", "window": int(now // 600 * 600), "window_s": 600,
                      "slot": slot, "importance": v})
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_values_from_a_generated_run(tmp_path: Path) -> None:
    now = time.time()
    cfg = config_from_dict(model_doc(SLOTS))
    _generated_run(tmp_path / "run", now)
    prev = {"importance": {"user_id": {"importance": 1.0}, "item_id": {"importance": 0.5}}}
    r = build_report(cfg, run_dirs=[tmp_path / "run"], registry=None, since_s=3600, now=now,
                     previous=prev)
    assert [w["auc"] for w in r["windows"]] == pytest.approx([0.70, 0.71, 0.72, 0.73, 0.74,
                                                              0.75])
    assert r["windows"][-1]["calibration"] == pytest.approx(1.10)
    assert r["windows"][-1]["logloss"] == pytest.approx(0.35)
    assert [w["examples"] for w in r["windows"]] == [None, 100, 100, 100, 100, 100]
    assert r["stream"] == {"windows": 6, "examples": 500, "positive_ratio": pytest.approx(0.15)}
    assert r["importance"]["user_id"]["change"] == pytest.approx(1.0)  # 1.0 -> 2.0
    assert r["importance"]["item_id"]["change"] == pytest.approx(0.0)
    item = next(c for c in r["coverage"] if c["slot"] == "item_id")
    assert (item["first"], item["last"], item["min"]) == pytest.approx((0.9, 0.4, 0.4))
    md = render_markdown(r, title="T")
    assert "| user_id | 2 | 1 | +100.0% |" in md and "| 1060 | 0.71 | 1.02 | 0.39 | 100 | 0.2 |" in md
    assert "<td>+100.0%</td>" in render_html(r, title="T")


def test_report_counts_versions_rollbacks_and_refusals(tmp_path: Path) -> None:
    run = online_run(tmp_path, SLOTS, n=900)
    reg = Registry(run["registry"])
    first = reg.versions()[0]
    reg.rollback(first, reason="serving AUC fell")
    reg.record({"kind": "gate_refused", "reason": "holdout AUC 0.6 < serving 0.7 - 0.02"})
    out = tmp_path / "reports"
    cmd = [sys.executable, "-m", "freshrec.cli", "report", "--config", str(run["config"]),
           "--run-dir", str(run["run_dir"]), "--registry", str(run["registry"]), "--out",
           str(out), "--since", "1h"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    r = json.loads((out / "latest.json").read_text())
    assert r["registry"]["published"] == len(reg.versions())
    assert r["registry"]["rollbacks"] == [{"to": first, "from": reg.versions()[-2],
                                           "reason": "serving AUC fell"}]
    assert r["registry"]["gate_refused"] == 1
    assert r["stream"]["examples"] > 0 and r["windows"][-1]["auc"] is not None
    assert r["freshness"]["versions"] == len(reg.versions())
    md = next(out.glob("report-*.md")).read_text()
    assert "serving AUC fell" in md and "holdout AUC 0.6" in md
    assert yaml.safe_load(Path(run["config"]).read_text())  # the config is untouched


def test_report_shows_the_serving_auc_per_window() -> None:
    """The serving AUC's windows of the period, with the version and the guard's verdict;
    a window before the period and one without an AUC are left out."""
    now = time.time()
    cfg = config_from_dict(model_doc(SLOTS))
    hist = [(now - 7200, 0.70, 1, True), (now - 120, 0.71, 1, True), (now - 60, 0.52, 2, False),
            (now - 30, float("nan"), 2, None), (now - 20, 0.69, 3, None)]
    r = build_report(cfg, run_dirs=[], registry=None, since_s=3600, now=now, serving=hist)
    assert r["serving"] == [
        {"event_time": now - 120, "auc": 0.71, "version": 1, "judged": "good"},
        {"event_time": now - 60, "auc": 0.52, "version": 2, "judged": "bad"},
        {"event_time": now - 20, "auc": 0.69, "version": 3, "judged": None}]
    md = render_markdown(r, title="T")
    assert "## Serving AUC per window" in md
    assert "| 0.71 | 1 | good |" in md and "| 0.52 | 2 | bad |" in md and "| 0.69 | 3 | - |" in md
    assert "<td>bad</td>" in render_html(r, title="T")
