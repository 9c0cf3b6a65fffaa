"""Serving metrics in the Prometheus text format (``GET /metrics``).

Small incremental objects (``inc``/``set``/``observe``, ``render``); the server owns one
:class:`ServeMetrics`. Updates are plain Python operations done under the GIL.

Examples
--------
>>> h = Histogram("lat_seconds", "latency", buckets=(0.001, 0.01))
>>> h.observe(0.0005); h.observe(0.005); h.observe(1.0)
>>> print(h.render())  # doctest: +NORMALIZE_WHITESPACE
# HELP lat_seconds latency
# TYPE lat_seconds histogram
lat_seconds_bucket{le="0.001"} 1
lat_seconds_bucket{le="0.01"} 2
lat_seconds_bucket{le="+Inf"} 3
lat_seconds_sum 1.0055
lat_seconds_count 3
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence

__all__ = ["Counter", "Gauge", "Histogram", "ServeMetrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5)


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


class Counter:
    """A monotonically increasing count per label set.

    >>> c = Counter("requests_total", "requests"); c.inc(code="200"); c.get(code="200")
    1.0
    """

    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self._values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self._values[key] = self._values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not self._values:
            lines.append(f"{self.name} 0")
        for key, v in sorted(self._values.items()):
            lines.append(f"{self.name}{_labels(key)} {v:g}")
        return "\n".join(lines)


class Gauge:
    """A value that goes up and down (``nan`` until set).

    >>> g = Gauge("model_version", "version"); g.set(3); g.get()
    3.0
    """

    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self._value = math.nan

    def set(self, value: float) -> None:
        self._value = float(value)

    def get(self) -> float:
        return self._value

    def render(self) -> str:
        v = "NaN" if math.isnan(self._value) else f"{self._value:.6g}"
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} gauge\n{self.name} {v}"


class Histogram:
    """Cumulative buckets, sum and count (Prometheus histogram)."""

    def __init__(self, name: str, help_: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name, self.help = name, help_
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self._sum += value
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self._counts, strict=False):
            acc += c
            lines.append(f'{self.name}_bucket{{le="{b:g}"}} {acc}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self._count}')
        lines.append(f"{self.name}_sum {self._sum:.6g}")
        lines.append(f"{self.name}_count {self._count}")
        return "\n".join(lines)


class ServeMetrics:
    """Every metric the server exports.

    >>> m = ServeMetrics(); m.requests.inc(route="score", code="200")
    >>> "freshrec_requests_total" in m.render()
    True
    """

    def __init__(self) -> None:
        self.latency = Histogram("freshrec_request_seconds",
                                 "scoring request latency in the server (arrival to response, "
                                 "every status)")
        self.predict = Histogram("freshrec_predict_seconds",
                                 "predictor time per request (features to scores)")
        self.requests = Counter("freshrec_requests_total", "requests by route and status code")
        self.errors = Counter("freshrec_errors_total", "failed requests by kind")
        self.candidates = Counter("freshrec_candidates_total", "candidates scored")
        self.model_version = Gauge("freshrec_model_version", "registry version being served")
        self.freshness = Gauge("freshrec_freshness_seconds",
                               "now - event time of the newest applied update")
        self.delta_apply = Histogram("freshrec_delta_apply_seconds",
                                     "time to apply one batch of sparse deltas in place",
                                     buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.swap = Histogram("freshrec_swap_seconds",
                              "time to load and warm a new model off the request path",
                              buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60))
        self.updates = Counter("freshrec_updates_total", "model updates by kind")
        self.update_errors = Counter("freshrec_update_errors_total", "failed update attempts")
        self.damaged_versions = Gauge("freshrec_registry_damaged_versions",
                                      "registry versions found damaged (skipped)")
        self.impressions = Counter("freshrec_impressions_total", "impression events written")
        self.impressions_dropped = Counter("freshrec_impressions_dropped_total",
                                           "impression events dropped (log queue full)")
        self.in_flight = Gauge("freshrec_in_flight", "requests being handled")
        self.event_time: float | None = None

    def render(self) -> str:
        if self.event_time is not None:
            self.freshness.set(max(0.0, time.time() - self.event_time))
        parts: list[Counter | Gauge | Histogram] = [
            self.latency, self.predict, self.requests, self.errors, self.candidates,
            self.model_version, self.freshness, self.delta_apply, self.swap, self.updates,
            self.update_errors, self.damaged_versions, self.impressions,
            self.impressions_dropped, self.in_flight]
        return "\n".join(p.render() for p in parts) + "\n"
