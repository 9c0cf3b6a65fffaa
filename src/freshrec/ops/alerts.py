"""Alert rules evaluated over the dashboard's series, and where fired alerts go.

:func:`evaluate` checks one :class:`~freshrec.ops.config.AlertRule` against the series a
:class:`~freshrec.ops.collect.Collector` returns; a :class:`Watcher` (what ``freshrec watch``
runs) evaluates every rule of the config at each :meth:`Watcher.check`, sends each alert that
starts firing to its sinks once (to the log, and to a webhook with retries), and notes when
it resolves. With ``ops.rollback.enabled`` and a registry, it also runs the rollback guard
live on the serving AUC the collector measures (:mod:`freshrec.ops.serving`).

Examples
--------
>>> from freshrec.ops.config import AlertRule
>>> rule = AlertRule(name="auc", kind="auc_drop", threshold=0.02, window_s=600)
>>> series = {"online.auc_window": [[0, 0.75], [300, 0.74], [600, 0.70]]}
>>> [a.message for a in evaluate(rule, series, slots=[])]
['auc_window fell 0.0500 (0.7500 -> 0.7000) within 600 s (allowed 0.02)']
>>> evaluate(rule, {"online.auc_window": [[0, 0.75], [600, 0.74]]}, slots=[])
[]
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from freshrec._retry import Backoff
from freshrec.ops.config import AlertKind, AlertRule

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig
    from freshrec.ops.collect import Collector

__all__ = ["Alert", "LogSink", "Sink", "Watcher", "WebhookSink", "evaluate"]

log = logging.getLogger(__name__)

Series = Mapping[str, Sequence[Sequence[float]]]


@dataclass(frozen=True)
class Alert:
    """One firing alert: the rule, what it is about (a slot, or ``""``), the value that broke
    the rule, a message, and when (the series' time of the value)."""

    rule: str
    kind: str
    subject: str
    value: float
    message: str
    severity: str
    at: float

    @property
    def key(self) -> tuple[str, str]:
        """Identifies the alert across evaluations (rule and subject)."""
        return self.rule, self.subject


def _drop(pts: Sequence[Sequence[float]], window_s: float) -> tuple[float, float, float] | None:
    """(peak within the window before the newest point, newest value, its time)."""
    if not pts:
        return None
    t, v = pts[-1][0], pts[-1][1]
    peak = max(p[1] for p in pts if p[0] >= t - window_s)
    return peak, v, t


def _alert(rule: AlertRule, subject: str, value: float, message: str, at: float) -> Alert:
    return Alert(rule.name, rule.kind.value, subject, float(value), message, rule.severity,
                 float(at))


def _per_window(pts: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The last value at each distinct time (running estimates are rewritten per window)."""
    last: dict[float, float] = {}
    for x, y in pts:
        last[x] = y
    return sorted(last.items())


def evaluate(rule: AlertRule, series: Series, *, slots: Sequence[str]) -> list[Alert]:
    """The alerts ``rule`` raises on ``series`` (``{key: [[x, y], ...]}``, time-ordered)."""
    k = rule.kind
    out: list[Alert] = []
    if k is AlertKind.AUC_DROP:
        d = _drop(series.get(f"online.{rule.metric}", []), rule.window_s)
        if d and d[0] - d[1] > rule.threshold:
            out.append(_alert(rule, "", d[0] - d[1],
                              f"{rule.metric} fell {d[0] - d[1]:.4f} ({d[0]:.4f} -> {d[1]:.4f})"
                              f" within {rule.window_s:g} s (allowed {rule.threshold:g})", d[2]))
    elif k is AlertKind.CALIBRATION_RANGE:
        pts = series.get(f"online.{rule.metric}", [])
        if pts and not rule.low <= pts[-1][1] <= rule.high:
            out.append(_alert(rule, "", pts[-1][1], f"{rule.metric} {pts[-1][1]:.4f} outside "
                              f"[{rule.low:g}, {rule.high:g}]", pts[-1][0]))
    elif k is AlertKind.COVERAGE_DROP:
        for s in slots:
            d = _drop(series.get(f"slot.{s}.coverage", []), rule.window_s)
            if d and d[0] - d[1] > rule.threshold:
                out.append(_alert(rule, s, d[0] - d[1], f"coverage of slot {s} fell "
                                  f"{d[0]:.4f} -> {d[1]:.4f} within {rule.window_s:g} s "
                                  f"(allowed {rule.threshold:g})", d[2]))
    elif k is AlertKind.IMPORTANCE_CHANGE:
        for s in slots:
            w = _per_window(series.get(f"slot.{s}.importance", []))
            if len(w) < 2:
                continue
            (_, old), (t, new) = w[-2], w[-1]
            change = abs(new - old) / old if old > 0 else (math.inf if new > 0 else 0.0)
            if change > rule.threshold:
                out.append(_alert(rule, s, change, f"importance of {s} changed {change:.0%} "
                                  f"({old:.4g} -> {new:.4g}; allowed {rule.threshold:.0%})", t))
    elif k is AlertKind.JOINER_LAG:
        pts = series.get("join.lag_s", [])
        if pts and pts[-1][1] > rule.threshold:
            out.append(_alert(rule, "", pts[-1][1], f"joiner lag {pts[-1][1]:.1f} s > "
                              f"{rule.threshold:g} s", pts[-1][0]))
    elif k is AlertKind.FRESHNESS_P99:
        pts = series.get("serve.freshness_s", [])
        if pts:
            t = pts[-1][0]
            p99 = float(np.percentile([p[1] for p in pts if p[0] >= t - rule.window_s], 99))
            if p99 > rule.threshold:
                out.append(_alert(rule, "", p99, f"freshness p99 {p99:.2f} s over "
                                  f"{rule.window_s:g} s > {rule.threshold:g} s", t))
    return out


class Sink(Protocol):
    """Where alerts go."""

    def send(self, alert: Alert, state: str) -> bool:
        """Deliver ``alert`` (``state``: ``firing`` or ``resolved``); True when delivered."""
        ...


class LogSink:
    """Alerts as warnings in the log (``ALERT ...``), resolutions as info lines."""

    def send(self, alert: Alert, state: str) -> bool:
        if state == "firing":
            log.warning("ALERT rule=%s kind=%s subject=%s severity=%s: %s", alert.rule,
                        alert.kind, alert.subject or "-", alert.severity, alert.message)
        else:
            log.info("RESOLVED rule=%s subject=%s", alert.rule, alert.subject or "-")
        return True


class WebhookSink:
    """POSTs each alert as JSON (``{"state", "alert": {...}}``) to ``url``; a connection
    error or a non-2xx answer is retried ``retries`` times in all, with back-off.

    Parameters
    ----------
    url : str
        ``http://HOST:PORT/PATH``.
    retries : int
    backoff : Backoff, optional
    sleep : callable
        How to wait between attempts (``time.sleep``).
    """

    def __init__(self, url: str, *, retries: int = 3, backoff: Backoff | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url
        self.retries = retries
        self.backoff = backoff or Backoff(first_s=0.2, cap_s=5.0)
        self.sleep = sleep
        #: deliveries, failed attempts (each retried), alerts given up on
        self.delivered = 0
        self.failed_attempts = 0
        self.undelivered = 0

    def _post(self, body: bytes) -> int:
        u = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=5)
        try:
            conn.request("POST", u.path or "/", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def send(self, alert: Alert, state: str) -> bool:
        body = json.dumps({"state": state, "alert": asdict(alert)}).encode()
        self.backoff.reset()
        for attempt in range(1, self.retries + 1):
            try:
                status = self._post(body)
                if 200 <= status < 300:
                    self.delivered += 1
                    return True
                why = f"HTTP {status}"
            except (OSError, http.client.HTTPException) as e:
                why = f"{type(e).__name__}: {e}"
            self.failed_attempts += 1
            if attempt < self.retries:
                delay = self.backoff.next()
                log.warning("webhook %s: attempt %d failed (%s); retrying in %.2fs", self.url,
                            attempt, why, delay)
                self.sleep(delay)
            else:
                log.error("webhook %s: alert %s not delivered after %d attempts (%s)",
                          self.url, alert.rule, self.retries, why)
        self.undelivered += 1
        return False


class Watcher:
    """Evaluates the config's alert rules on a collector's data and sends alerts.

    Parameters
    ----------
    config : FreshrecConfig
        ``ops.alerts`` are the rules; the slots are those of ``features``.
    collector : Collector
    sinks : sequence of Sink
        Default: the log, and ``ops.webhook`` when set.
    """

    def __init__(self, config: FreshrecConfig, collector: Collector,
                 sinks: Sequence[Sink] | None = None) -> None:
        self.config = config
        self.collector = collector
        ops = config.ops
        if sinks is None:
            sinks = [LogSink()] + ([WebhookSink(ops.webhook, retries=ops.webhook_retries)]
                                   if ops.webhook else [])
        self.sinks = list(sinks)
        self.active: dict[tuple[str, str], Alert] = {}
        self.fired = 0
        serving = collector.serving
        if ops.rollback.enabled and serving is not None and collector.registry is not None:
            from freshrec.ops.rollback import RollbackGuard
            from freshrec.sync.registry import Registry

            # the live rollback: the serving AUC of each window judged, the registry rolled
            # back on a sustained drop, a critical alert to the same sinks
            serving.guard = RollbackGuard(ops.rollback, Registry(collector.registry),
                                          self.sinks)

    def evaluate(self, series: Series) -> list[Alert]:
        """Every alert the rules raise on ``series`` now."""
        slots = [s.name for s in self.config.features.slots]
        return [a for r in self.config.ops.alerts for a in evaluate(r, series, slots=slots)]

    def check(self) -> list[Alert]:
        """Scrape, evaluate, send the alerts that start firing (and resolutions); returns
        the alerts that started firing."""
        self.collector.scrape()
        now = {a.key: a for a in self.evaluate(self.collector.collect()["series"])}
        new = [a for k, a in now.items() if k not in self.active]
        for a in new:
            self.fired += 1
            for sink in self.sinks:
                sink.send(a, "firing")
        for k, a in self.active.items():
            if k not in now:
                for sink in self.sinks:
                    sink.send(a, "resolved")
        self.active = now
        return new

    def status(self) -> dict[str, Any]:
        """Active alerts and counters (for the CLI's summary line), and the serving AUC's
        windows and rollbacks when the collector measures it."""
        out: dict[str, Any] = {"active": [asdict(a) for a in self.active.values()],
                               "fired": self.fired}
        serving = self.collector.serving
        if serving is not None:
            g = serving.guard
            out["serving"] = {
                "matched": serving.scores.matched, "unmatched": serving.scores.unmatched,
                "unscored": serving.scores.unscored,
                "windows": [{"start": w[0], "auc": w[1] if math.isfinite(w[1]) else None,
                             "version": w[2], "good": w[3]} for w in g.history],
                "rollbacks": [asdict(a) for a in g.actions]}
        return out
