"""Serving metrics in the Prometheus text format (``GET /metrics``).

Small incremental objects (``inc``/``set``/``observe``, ``render``); the server owns one
:class:`ServeMetrics`. Updates are plain Python operations done under the GIL. Values are
printed exactly (:func:`sample`: an integral value as an integer, any other as the shortest
decimal that reads back as the same float), so ``rate()`` keeps its resolution past a
million requests; the standard ``process_*`` metrics come from :class:`ProcessMetrics`.

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
import os
import time
from collections.abc import Sequence

__all__ = ["Counter", "Gauge", "Histogram", "ProcessMetrics", "ServeMetrics", "sample"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5)


def sample(value: float) -> str:
    """The exact Prometheus text of a sample value.

    >>> sample(1_000_001.0), sample(123456789012.0), sample(0.1 + 0.2), sample(math.nan)
    ('1000001', '123456789012', '0.30000000000000004', 'NaN')
    >>> sample(math.inf), sample(-2.5e-7)
    ('+Inf', '-2.5e-07')
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2.0**63:
        return str(int(value))
    return repr(float(value))


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
            lines.append(f"{self.name}{_labels(key)} {sample(v)}")
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
        return (f"# HELP {self.name} {self.help}\n# TYPE {self.name} gauge\n"
                f"{self.name} {sample(self._value)}")


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
        lines.append(f"{self.name}_sum {sample(self._sum)}")
        lines.append(f"{self.name}_count {self._count}")
        return "\n".join(lines)


class ProcessMetrics:
    """The standard ``process_*`` metrics of this process (CPU time, memory, file
    descriptors, start time), read when rendered; memory and descriptors from ``/proc``
    where there is one (Linux), else left out.

    >>> text = ProcessMetrics().render()
    >>> "process_cpu_seconds_total " in text and "process_start_time_seconds " in text
    True
    """

    def __init__(self) -> None:
        self._start = _process_start_time()

    def render(self) -> str:
        t = os.times()
        values: list[tuple[str, str, str, float]] = [
            ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in "
             "seconds.", t.user + t.system),
            ("process_start_time_seconds", "gauge", "Start time of the process since unix "
             "epoch in seconds.", self._start)]
        try:
            with open("/proc/self/statm", "rb") as f:
                vms, rss = (int(x) * os.sysconf("SC_PAGE_SIZE") for x in f.read().split()[:2])
            values += [
                ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vms),
                ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                 rss),
                ("process_open_fds", "gauge", "Number of open file descriptors.",
                 len(os.listdir("/proc/self/fd")))]
        except OSError:
            pass
        return "\n".join(f"# HELP {n} {h}\n# TYPE {n} {k}\n{n} {sample(float(v))}"
                         for n, k, h, v in values)


def _process_start_time() -> float:
    """Unix time of this process's start (Linux: from ``/proc``; elsewhere: now)."""
    try:
        with open("/proc/self/stat", "rb") as f:  # field 22: start, in ticks after boot
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


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
        self.shed = Counter("freshrec_shed_total", "requests answered 503 by admission control, "
                            "by reason (in_flight: every slot taken; queue: waited past "
                            "queue_budget_s)")
        self.queue_wait = Histogram("freshrec_queue_seconds",
                                    "wait between a request's arrival and its scoring")
        self.slow_clients = Counter("freshrec_slow_clients_total",
                                    "connections closed for sending headers or a body too "
                                    "slowly, by phase")
        self.process = ProcessMetrics()
        self.event_time: float | None = None

    def render(self) -> str:
        if self.event_time is not None:
            self.freshness.set(max(0.0, time.time() - self.event_time))
        parts: list[Counter | Gauge | Histogram | ProcessMetrics] = [
            self.latency, self.predict, self.requests, self.errors, self.candidates,
            self.model_version, self.freshness, self.delta_apply, self.swap, self.updates,
            self.update_errors, self.damaged_versions, self.impressions,
            self.impressions_dropped, self.in_flight, self.shed, self.queue_wait,
            self.slow_clients, self.process]
        from freshrec.store.served import render_metrics  # tables served from Redis

        return "\n".join(p.render() for p in parts) + "\n" + render_metrics()
