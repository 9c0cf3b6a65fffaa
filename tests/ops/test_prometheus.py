"""A Prometheus server's HTTP API as a dashboard source: Debian's ``prometheus`` binary scrapes
a real freshrec ``/metrics`` endpoint every second, and the collector reads the panels'
PromQL back through ``/api/v1/query_range``."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freshrec.config import config_from_dict
from freshrec.ops.collect import Collector
from freshrec.ops.sources import prometheus_range
from tests.conftest import free_ports, stop_process
from tests.ops.conftest import ensure_tool, model_doc


@pytest.fixture
def prometheus(serve_metrics: Any, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus server on loopback scraping ``serve_metrics`` every second."""
    exe = ensure_tool("prometheus")
    target = serve_metrics.url.removeprefix("http://").split("/")[0]
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: freshrec\n    static_configs:\n"
        f"      - targets: ['{target}']\n")
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([exe, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not get ready"
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)


def test_panels_read_from_a_prometheus_server(serve_metrics: Any, prometheus: str) -> None:
    m = serve_metrics.m
    m.model_version.set(7)
    cfg = config_from_dict(model_doc(["user_id", "item_id"]))
    deadline = time.monotonic() + 60
    # the server keeps serving: requests and their latencies between Prometheus's scrapes
    while time.monotonic() < deadline:
        for _ in range(20):
            m.requests.inc(route="score", code="200")
            m.latency.observe(0.003)
        serve_metrics.render()
        time.sleep(0.25)
        now = time.time()
        qps = prometheus_range(prometheus, "sum(rate(freshrec_requests_total[1m]))",
                               now - 60, now, 1)
        if len(qps) >= 3 and qps[-1][1] > 0:
            break
    else:
        pytest.fail("prometheus has no rate of freshrec_requests_total after 60 s")
    c = Collector(cfg, prometheus_url=prometheus, prometheus_range_s=120)
    c.scrape()
    series = c.collect()["series"]
    assert series["serve.version"] and {p[1] for p in series["serve.version"]} == {7.0}
    now = time.time()
    assert all(now - 130 <= p[0] <= now + 1 for p in series["serve.version"])
    assert series["serve.qps"][-1][1] > 0  # about 80 requests/s were counted
    # every latency is 3 ms: histogram_quantile gives a value in 3 ms's bucket
    p50 = series["serve.latency_p50_ms"][-1][1]
    bounds = [le for le in m.latency.buckets if le >= 0.003]
    assert 0 < p50 <= bounds[0] * 1e3
    # what no target exports has no series; a source given directly keeps its own data
    assert "slot.user_id.coverage" not in series
    c2 = Collector(cfg, prometheus_url=prometheus, metrics_urls=[serve_metrics.url],
                   prometheus_range_s=120)
    c2.scrape()
    assert len(c2.collect()["series"]["serve.version"]) == 1  # the one direct scrape
    # a server that is not there reads as no data
    assert prometheus_range("http://127.0.0.1:9", "up", now - 10, now, 1) == []
    assert json.loads(json.dumps(series))  # JSON-able for the page
