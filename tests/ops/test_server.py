"""The dashboard in a real browser: a real ``freshrec dashboard`` process on loopback, fed by
a real online run (metrics.jsonl, registry) and a real server-metrics endpoint, loaded by
Debian's headless Chromium; assertions on the rendered DOM."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import stop_process
from tests.ops.conftest import (
    chromium,
    console_messages,
    online_run,
    start_dashboard,
)

SLOTS = ["user_id", "item_id", "hour"]


def _points(dom: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r'id="([\w-]+)"[^>]*data-points="(\d+)"', dom)}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return online_run(tmp_path_factory.mktemp("run"), SLOTS)


def test_dashboard_page_in_chromium(run: dict[str, object], serve_metrics, tmp_path: Path
                                    ) -> None:
    m = serve_metrics.m
    m.model_version.set(7)
    m.event_time = time.time() - 3.0
    serve_metrics.render()
    proc, url = start_dashboard(
        ["--config", str(run["config"]), "--run-dir", str(run["run_dir"]), "--registry",
         str(run["registry"]), "--metrics-url", serve_metrics.url, "--interval", "0.5"],
        tmp_path / "dashboard.log")
    try:
        for i in range(40):  # requests between the dashboard's scrapes: latency and QPS
            m.requests.inc(route="score", code="200")
            m.latency.observe(0.002 + 0.0001 * i)
            serve_metrics.render()
            time.sleep(0.05)
        time.sleep(1.5)
        out = chromium(url, "--dump-dom")
        shot = tmp_path / "dashboard.png"
        chromium(url, f"--screenshot={shot}")
    finally:
        stop_process(proc, timeout_s=20)
    dom = out.stdout
    assert 'data-rendered="1"' in dom
    assert console_messages(out.stderr) == []
    assert re.search(r'id="errors" data-count="0"', dom), dom[:2000]
    points = _points(dom)
    for slot in SLOTS:  # every configured slot has its row with four panels
        assert f'data-slot="{slot}"' in dom
        for what in ("coverage", "distinct", "table", "importance"):
            assert f"slot-{slot}-{what}" in points
        assert points[f"slot-{slot}-coverage"] > 0
        assert points[f"slot-{slot}-distinct"] > 0
        assert points[f"slot-{slot}-table"] > 0
        assert points[f"slot-{slot}-importance"] > 0
    for panel in ("model-auc", "model-logloss", "model-calibration", "model-examples",
                  "registry-versions", "registry-auc", "model-freshness", "serve-latency",
                  "serve-qps"):
        assert points[panel] > 0, panel
    # plotly drew the charts: one SVG per panel with data
    assert dom.count('class="main-svg"') >= 2 * sum(1 for v in points.values() if v)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_with_an_extra_slot_opens_from_disk(run: dict[str, object], tmp_path: Path
                                                  ) -> None:
    """A slot added to the config gets its row with no code change; --export writes a page
    that Chromium opens from disk (file://) with its charts."""
    doc = yaml.safe_load(Path(str(run["config"])).read_text())
    doc["features"]["tables"]["t_extra"] = {"dim": 4}
    doc["features"]["slots"]["extra_slot"] = {"table": "t_extra"}
    cfg = tmp_path / "extra.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out_dir = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "freshrec.cli", "dashboard", "--config", str(cfg),
                    "--run-dir", str(run["run_dir"]), "--export", str(out_dir)],
                   check=True, capture_output=True)
    assert {p.name for p in out_dir.iterdir()} >= {"index.html", "data.js", "plotly.min.js"}
    out = chromium((out_dir / "index.html").as_uri(), "--dump-dom")
    points = _points(out.stdout)
    assert console_messages(out.stderr) == []
    assert 'data-slot="extra_slot"' in out.stdout
    for what in ("coverage", "distinct", "table", "importance"):
        assert points[f"slot-extra_slot-{what}"] == 0  # its panels, with no data yet
    assert points["model-auc"] > 0 and points["slot-hour-coverage"] > 0
