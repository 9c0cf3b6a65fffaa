"""Prometheus rules generated from the config: ``promtool check rules`` accepts them and
``promtool test rules`` shows them firing on a breaking series and quiet otherwise."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from freshrec.config import config_from_dict
from freshrec.ops.rules import prometheus_rules
from tests.ops.conftest import ensure_tool, model_doc

ALERTS = [
    {"name": "auc", "kind": "auc_drop", "threshold": 0.02, "window_s": 600},
    {"name": "cal", "kind": "calibration_range", "low": 0.8, "high": 1.2},
    {"name": "imp", "kind": "importance_change", "threshold": 0.5, "window_s": 600},
    {"name": "cov", "kind": "coverage_drop", "threshold": 0.1, "window_s": 600},
    {"name": "lag", "kind": "joiner_lag", "threshold": 30, "severity": "critical"},
    {"name": "fresh", "kind": "freshness_p99", "threshold": 10, "window_s": 300},
]
SLOTS = ["user_id", "item_id", "hour"]


def _rules(tmp_path: Path) -> Path:
    cfg = config_from_dict(model_doc(SLOTS, ops={"alerts": ALERTS}))
    path = tmp_path / "rules.yaml"
    path.write_text(prometheus_rules(cfg))
    return path


def test_promtool_accepts_the_generated_rules(tmp_path: Path) -> None:
    path = _rules(tmp_path)
    out = subprocess.run([ensure_tool("promtool"), "check", "rules", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # one rule per global alert, one per slot for the per-slot ones
    assert f"SUCCESS: {4 + 2 * len(SLOTS)} rules found" in out.stdout
    names = [r["alert"] for r in yaml.safe_load(path.read_text())["groups"][0]["rules"]]
    assert {"cov_hour", "imp_item_id", "auc", "lag"} <= set(names)


def test_rules_fire_on_breaking_series_in_promtool(tmp_path: Path) -> None:
    path = _rules(tmp_path)
    auc = 'freshrec_online_metric{metric="auc_window"}'
    cov = 'freshrec_slot_coverage{slot="item_id"}'
    tests: dict[str, Any] = {"rule_files": [path.name], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": auc, "values": "0.75 0.755 0.748 0.752 0.70 0.70"},
            {"series": cov, "values": "0.9 0.9 0.91 0.89 0.9 0.9 0.9 0.9 0.9 0.9 0.9 0.9 0.7"},
            {"series": "freshrec_joiner_lag_seconds", "values": "5 8 12 40"},
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "auc", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "auc", "exp_alerts": [{"exp_labels": {
                "severity": "warning", "rule": "auc", "metric": "auc_window"}}]},
            {"eval_time": "11m", "alertname": "cov_item_id", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "cov_item_id", "exp_alerts": [{"exp_labels": {
                "severity": "warning", "rule": "cov", "slot": "item_id"}}]},
            {"eval_time": "2m", "alertname": "lag", "exp_alerts": []},
            {"eval_time": "3m", "alertname": "lag", "exp_alerts": [{"exp_labels": {
                "severity": "critical", "rule": "lag"}}]},
        ]}]}
    notes = {r["alert"]: r["annotations"]
             for r in yaml.safe_load(path.read_text())["groups"][0]["rules"]}
    for case in tests["tests"][0]["alert_rule_test"]:
        for exp in case["exp_alerts"]:
            exp["exp_annotations"] = notes[case["alertname"]]
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    out = subprocess.run([ensure_tool("promtool"), "test", "rules", str(test_file)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
