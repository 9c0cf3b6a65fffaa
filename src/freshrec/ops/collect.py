"""Gathers the time series of every dashboard panel from what the system writes.

A :class:`Collector` reads ``metrics.jsonl`` of run directories (the online trainer's window
lines, the batch trainer's step lines, importance records), the registry's manifests, the
joiner's logs named in the config, and scrapes Prometheus ``/metrics`` endpoints (the
server's); each :meth:`Collector.collect` returns ``{series key: [[x, y], ...]}`` for the keys
of :func:`~freshrec.ops.layout.dashboard_layout` (``x`` unix seconds, or the step for batch
lines without a time) plus the scalar gauges exported on the dashboard's ``/metrics``. With
the ``join`` section's logs, each scrape also reads the impressions' served scores joined
with the examples' labels (:mod:`freshrec.ops.serving`): ``serve.auc`` per window.

Examples
--------
>>> import tempfile, json, pathlib
>>> from freshrec.config import config_from_dict
>>> cfg = config_from_dict({"features": {"tables": {"item": {"dim": 4}},
...                                      "slots": {"item_id": {"table": "item"}}},
...                         "model": {"kind": "deepfm", "mlp": [8]}})
>>> run = pathlib.Path(tempfile.mkdtemp())
>>> line = {"kind": "window", "event_time": 60, "auc_window": 0.71,
...         "slots": {"item_id": {"coverage": 0.5, "distinct": 9}},
...         "tables": {"item": {"entries": 9, "admitted": 9, "expired": 0}}}
>>> _ = (run / "metrics.jsonl").write_text(json.dumps(line) + "\\n")
>>> data = Collector(cfg, run_dirs=[run]).collect()
>>> data["series"]["online.auc_window"], data["series"]["slot.item_id.coverage"]
([[60, 0.71]], [[60, 0.5]])
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freshrec.ops.sources import (
    buckets,
    histogram_quantile,
    http_get,
    parse_samples,
    prometheus_range,
    read_metrics,
    registry_history,
)

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig
    from freshrec.ops.serving import ServingMonitor
    from freshrec.ops.sources import Sample

__all__ = ["Collector"]

Points = list[list[Any]]

_MODEL_METRICS = ("auc", "auc_window", "logloss", "logloss_window", "calibration",
                  "calibration_window", "examples_per_s")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class Collector:
    """Reads the system's outputs into dashboard series; see the module docstring.

    Parameters
    ----------
    config : FreshrecConfig
        The model config (slots, tables) and the ``join`` section (its logs).
    run_dirs : sequence of path
        Run directories whose ``metrics.jsonl`` is read.
    registry : path, optional
    metrics_urls : sequence of str
        Prometheus endpoints to scrape (``http://HOST:PORT/metrics``).
    history : int
        Scrapes kept per endpoint series.
    prometheus_url : str, optional
        A Prometheus server (``http://HOST:PORT``): each scrape also asks it for the last
        ``prometheus_range_s`` seconds of every panel's PromQL expression
        (:func:`~freshrec.ops.layout.dashboard_layout`), for the series that the other
        sources leave empty.
    prometheus_range_s : float
    """

    def __init__(self, config: FreshrecConfig, *, run_dirs: Sequence[str | Path] = (),
                 registry: str | Path | None = None, metrics_urls: Sequence[str] = (),
                 history: int = 3600, prometheus_url: str | None = None,
                 prometheus_range_s: float = 3600.0) -> None:
        self.config = config
        self.run_dirs = [Path(d) for d in run_dirs]
        self.registry = Path(registry) if registry is not None else None
        self.metrics_urls = list(metrics_urls)
        self._scrapes: dict[str, deque[list[Any]]] = {}
        self._history = history
        self._last: dict[str, tuple[float, list[Sample]]] = {}
        self._lock = threading.Lock()
        self.prometheus_url = prometheus_url
        self.prometheus_range_s = prometheus_range_s
        self._prom: dict[str, Points] = {}
        #: metrics.jsonl lines that were not JSON objects, at the last collect
        self.bad_lines = 0
        #: the serving AUC from the ``join`` section's logs (None without both)
        self.serving: ServingMonitor | None = None
        jc = config.join
        if jc.source and jc.output:
            from freshrec.ops.rollback import RollbackGuard
            from freshrec.ops.serving import ServedScores, ServingMonitor

            horizon = max(3600.0, 4.0 * (jc.window_s + jc.allowed_lateness_s))
            self.serving = ServingMonitor(
                ServedScores(jc.source, jc.output, config.features.labels[0],
                             horizon_s=horizon),
                RollbackGuard(config.ops.rollback, None))

    # ------------------------------------------------------------------ scraping
    def scrape(self, now: float | None = None) -> None:
        """Scrape every endpoint once and append to the server series (version, freshness,
        latency percentiles and QPS over the interval since the previous scrape)."""
        now = time.time() if now is None else now
        self._scrape_join(now)
        if self.serving is not None:
            self.serving.poll()
        if self.prometheus_url:
            self._query_prometheus(now)
        for url in self.metrics_urls:
            text = http_get(url)
            if text is None:
                continue
            samples = parse_samples(text)
            prev = self._last.get(url)
            self._last[url] = (now, samples)
            values = {s.name: s.value for s in samples if not s.labels}
            points: dict[str, float] = {}
            if "freshrec_model_version" in values:
                points["serve.version"] = values["freshrec_model_version"]
            if "freshrec_freshness_seconds" in values:
                points["serve.freshness_s"] = values["freshrec_freshness_seconds"]
            if prev is not None:
                dt = now - prev[0]
                new = buckets(samples, "freshrec_request_seconds")
                old = dict(buckets(prev[1], "freshrec_request_seconds"))
                delta = [(le, c - old.get(le, 0.0)) for le, c in new]
                for q in ("50", "99"):
                    v = histogram_quantile(float(f"0.{q}"), delta)
                    if math.isfinite(v):
                        points[f"serve.latency_p{q}_ms"] = v * 1e3
                reqs = sum(s.value for s in samples if s.name == "freshrec_requests_total")
                before = sum(s.value for s in prev[1] if s.name == "freshrec_requests_total")
                if dt > 0:
                    points["serve.qps"] = max(reqs - before, 0.0) / dt
            self._append(now, points)

    def _query_prometheus(self, now: float) -> None:
        """Every panel series' PromQL over the last ``prometheus_range_s`` seconds."""
        from freshrec.ops.layout import dashboard_layout

        assert self.prometheus_url is not None
        step = max(self.prometheus_range_s / 600.0, 1.0)  # at most ~600 points a series
        got: dict[str, Points] = {}
        for row in dashboard_layout(self.config):
            for panel in row.panels:
                for series in panel.series:
                    pts = prometheus_range(self.prometheus_url, series.expr,
                                           now - self.prometheus_range_s, now, step)
                    if pts:
                        got[series.key] = [[round(t, 3), v] for t, v in pts]
        with self._lock:
            self._prom = got

    def _append(self, now: float, points: dict[str, float]) -> None:
        with self._lock:
            for key, v in points.items():
                if math.isfinite(v):
                    self._scrapes.setdefault(key, deque(maxlen=self._history)).append(
                        [round(now, 3), v])

    def _scrape_join(self, now: float) -> None:
        """The joiner's lag and quarantined examples, from the logs of the ``join`` section."""
        from freshrec.ops.joinstate import joiner_lag_s, quarantined

        jc = self.config.join
        points: dict[str, float] = {}
        lag = joiner_lag_s(jc.source, jc.output) if jc.source and jc.output else None
        if lag is not None:
            points["join.lag_s"] = lag
        q = quarantined(jc.quarantine) if jc.quarantine else None
        if q is not None:
            points["join.quarantined"] = float(q)
        self._append(now, points)

    # ------------------------------------------------------------------ reading
    def _from_runs(self, series: dict[str, Points]) -> None:
        self.bad_lines = 0
        for run in self.run_dirs:
            records, bad = read_metrics(run)
            self.bad_lines += bad
            for rec in records:
                kind = rec.get("kind")
                if kind == "importance":
                    x = rec.get("window", 0)  # the window's event-time start
                    if _finite(rec.get("importance")) and isinstance(rec.get("slot"), str):
                        series.setdefault(f"slot.{rec['slot']}.importance", []).append(
                            [x, rec["importance"]])
                    continue
                if kind not in (None, "window"):
                    continue
                x = rec.get("event_time", rec.get("step"))
                if x is None:
                    continue
                for m in _MODEL_METRICS:
                    if _finite(rec.get(m)):
                        series.setdefault(f"online.{m}", []).append([x, rec[m]])
                for slot, st in (rec.get("slots") or {}).items():
                    for what in ("coverage", "distinct"):
                        if isinstance(st, dict) and _finite(st.get(what)):
                            series.setdefault(f"slot.{slot}.{what}", []).append([x, st[what]])
                for table, st in (rec.get("tables") or {}).items():
                    for what in ("entries", "admitted", "expired"):
                        if isinstance(st, dict) and _finite(st.get(what)):
                            series.setdefault(f"table.{table}.{what}", []).append([x, st[what]])
                for t in self.config.features.tables:  # batch lines: "<table>_entries"
                    if _finite(rec.get(f"{t.name}_entries")):
                        series.setdefault(f"table.{t.name}.entries", []).append(
                            [x, rec[f"{t.name}_entries"]])

    def _from_registry(self, series: dict[str, Points], events: list[dict[str, Any]]) -> None:
        if self.registry is None:
            return
        for v in registry_history(self.registry):
            x = round(v["created_unix_s"], 3)
            series.setdefault("registry.version", []).append([x, v["version"]])
            if _finite(v["metrics"].get("auc")):
                series.setdefault("registry.auc", []).append([x, v["metrics"]["auc"]])
            if v["rollback_to"] is not None:
                events.append({"kind": "rollback", "t": x, "version": v["version"],
                               "to": v["rollback_to"], "from": v["rolled_back_from"]})
        from freshrec.sync.registry import Registry

        with contextlib.suppress(OSError):
            events += Registry(self.registry).events()

    def collect(self) -> dict[str, Any]:
        """``{"series": {key: [[x, y], ...]}, "events": [...], "generated_unix_s": ...}``."""
        series: dict[str, Points] = {}
        events: list[dict[str, Any]] = []
        self._from_runs(series)
        self._from_registry(series, events)
        with self._lock:
            for key, scraped in self._scrapes.items():
                series[key] = [list(p) for p in scraped]
        if self.serving is not None:
            series.update({k: v for k, v in self.serving.series().items() if v})
        with self._lock:
            for key, pts in self._prom.items():
                if not series.get(key):
                    series[key] = [list(p) for p in pts]
        for key, pts in series.items():
            series[key] = sorted(pts, key=lambda p: p[0])
        return {"series": series, "events": events, "generated_unix_s": round(time.time(), 3),
                "bad_lines": self.bad_lines}
