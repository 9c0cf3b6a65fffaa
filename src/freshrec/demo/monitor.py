"""Samples every stage of the running loop once a tick: the time series the live table and
the plot show, the running totals, and the end-of-run summary.

A sample holds the driver's requests, latency and serving AUC (scores against the clicks
drawn), the event log's growth, the examples the joiner wrote, the registry's newest version
and the trainer's progressive AUC (from each version's meta), and the version and freshness
the server reports on ``/metrics``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.demo.prometheus import parse_prometheus
from freshrec.demo.traffic import DriverStats, TrafficDriver
from freshrec.errors import FreshrecError
from freshrec.stream.open import open_log
from freshrec.sync.registry import Registry

__all__ = ["Monitor", "auc", "percentile_ms", "trainer_final"]


def percentile_ms(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (seconds) in milliseconds; NaN when empty."""
    return float(np.percentile(values, q) * 1e3) if values else math.nan


def auc(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """AUC of the scores against the labels (batches of them); NaN without any."""
    from freshrec.train.metrics import AUC

    if not scores:
        return math.nan
    m = AUC()
    m.update(np.concatenate(labels), np.concatenate(scores))
    return float(m.get())


class Monitor:
    """Samples every stage once per tick; keeps the time series and running totals.

    Parameters
    ----------
    registry : Path
        The registry the trainer publishes to.
    events, examples : str
        Log specs of the event log and of the joined examples.
    url : str
        ``http://host:port`` of the server (its ``/metrics``).
    driver : TrafficDriver
        The traffic driver, whose measurements :meth:`tick` takes.
    """

    def __init__(self, registry: Path, events: str, examples: str, url: str,
                 driver: TrafficDriver) -> None:
        self.driver = driver
        self.registry = Registry(registry)
        self.events = open_log(events)
        self.examples = open_log(examples)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._host, self._port = host, int(port)
        self.samples: list[dict[str, Any]] = []
        self.latencies: list[float] = []
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.true_p: list[np.ndarray] = []
        self._recent: list[tuple[float, DriverStats]] = []
        self.totals = {"requests": 0, "errors": 0, "clicks_drawn": 0, "clicks_written": 0,
                       "examples_out": 0}
        self._ex_offset = 0
        self._t0 = time.monotonic()
        self._last_events: tuple[float, int] | None = None
        self.server: dict[str, float] = {}
        self.meta: dict[str, Any] = {}
        self.last_error = ""

    def close(self) -> None:
        """Close the logs it reads."""
        self.events.close()
        self.examples.close()

    def _server_metrics(self) -> dict[str, float]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            return parse_prometheus(resp.read().decode()) if resp.status == 200 else {}
        except (OSError, http.client.HTTPException):
            return {}
        finally:
            conn.close()

    def _count_examples(self) -> None:
        from freshrec.stream.events import decode_examples

        while True:
            recs = self.examples.read(0, self._ex_offset, 64)
            if not recs:
                return
            rb, _ = decode_examples([r.value for r in recs])
            self.totals["examples_out"] += 0 if rb is None else rb.num_rows
            self._ex_offset = recs[-1].offset + 1

    def tick(self) -> dict[str, Any]:
        """Take one sample of every stage (see :attr:`samples`) and return it."""
        now = time.monotonic()
        s = self.driver.take()
        for k in ("requests", "errors", "clicks_drawn", "clicks_written"):
            self.totals[k] += getattr(s, k)
        self.last_error = s.last_error or self.last_error
        self.latencies += s.latencies
        self.scores += s.scores
        self.labels += s.labels
        self.true_p += s.true_p
        self._recent = [(t, r) for t, r in self._recent if now - t < 10.0] + [(now, s)]
        span = max(now - self._recent[0][0], 1.0) if len(self._recent) > 1 else 1.0
        lat = [x for _, r in self._recent for x in r.latencies]
        n_events = sum(self.events.end_offset(p) for p in range(self.events.partitions))
        ev_rate = math.nan
        if self._last_events is not None:
            ev_rate = (n_events - self._last_events[1]) / max(now - self._last_events[0], 1e-3)
        self._last_events = (now, n_events)
        self._count_examples()
        head = self.registry.head()
        meta: dict[str, Any] = {}
        head_time = None
        if head is not None:
            with contextlib.suppress(FreshrecError, OSError, ValueError):
                m = self.registry.manifest(head)
                meta, head_time = m.meta, m.event_time
        self.meta = meta or self.meta
        server = self._server_metrics()
        self.server = server or self.server
        served = server.get("freshrec_model_version", math.nan)
        fresh = server.get("freshrec_freshness_seconds", math.nan)
        metrics = meta.get("metrics") or {}
        sample = {
            "t_s": round(now - self._t0, 2),
            "requests": self.totals["requests"],
            "errors": self.totals["errors"],
            "requests_per_s": sum(r.requests for _, r in self._recent[1:]) / span
            if len(self._recent) > 1 else float(s.requests),
            "latency_p50_ms": percentile_ms(lat, 50),
            "latency_p99_ms": percentile_ms(lat, 99),
            "events": n_events,
            "events_per_s": ev_rate,
            "clicks_written": self.totals["clicks_written"],
            "examples_out": self.totals["examples_out"],
            "registry_version": head,
            "registry_event_time": head_time,
            "examples_trained": meta.get("examples"),
            "online_auc": metrics.get("auc"),
            "serving_auc_10s": auc([x for _, r in self._recent for x in r.scores],
                                    [x for _, r in self._recent for x in r.labels]),
            "served_version": None if math.isnan(served) else int(served),
            "freshness_s": None if math.isnan(fresh) else round(fresh, 2),
            "updates_applied": int(server.get("freshrec_updates_total", 0.0)),
        }
        self.samples.append(sample)
        return sample

    def summary(self, trainer: dict[str, Any], versions: list[int],
                duration: float) -> dict[str, Any]:
        """The end-of-run numbers (the ``summary`` of ``metrics.json``).

        ``trainer`` is what the trainer printed when it stopped (:func:`trainer_final`),
        ``versions`` the registry's versions and ``duration`` the seconds of traffic.
        """
        fresh = [s["freshness_s"] for s in self.samples if s["freshness_s"] is not None]
        metrics = self.meta.get("metrics") or {}
        online_auc = trainer.get("auc", metrics.get("auc"))
        trained = trainer.get("examples", self.meta.get("examples"))
        return {
            "duration_s": round(duration, 1),
            "requests": self.totals["requests"],
            "request_errors": self.totals["errors"],
            "requests_per_s": round(self.totals["requests"] / max(duration, 1e-9), 2),
            "latency_p50_ms": percentile_ms(self.latencies, 50),
            "latency_p99_ms": percentile_ms(self.latencies, 99),
            "clicks": self.totals["clicks_written"],
            "events": self.samples[-1]["events"] if self.samples else 0,
            "examples_joined": self.totals["examples_out"],
            "examples_trained": int(trained) if trained is not None else 0,
            "versions_published": len(versions),
            "registry_head": versions[-1] if versions else None,
            "served_version": next((s["served_version"] for s in reversed(self.samples)
                                    if s["served_version"] is not None), None),
            "updates_applied": max((s["updates_applied"] for s in self.samples), default=0),
            "online_auc": float(online_auc) if online_auc is not None else math.nan,
            "serving_auc": auc(self.scores, self.labels),
            "oracle_auc": auc(self.true_p, self.labels),
            "freshness_last_s": fresh[-1] if fresh else math.nan,
            "freshness_median_s": float(np.median(fresh)) if fresh else math.nan,
        }


def trainer_final(path: Path) -> dict[str, Any]:
    """The JSON summary line ``freshrec train --online`` prints when it stops."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict) and "examples" in obj:
                    return obj
    return {}
