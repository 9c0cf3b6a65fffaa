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
from collections.abc import Mapping, Sequence
from typing import Any

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

    def state(self) -> list[Any]:
        """The values as JSON-able data (for :meth:`merge` in another process)."""
        return [[[list(kv) for kv in key], v] for key, v in dict(self._values).items()]

    def merge(self, state: list[Any]) -> None:
        """Add the values of another counter's :meth:`state`."""
        for key, v in state:
            k = tuple((str(a), str(b)) for a, b in key)
            self._values[k] = self._values.get(k, 0.0) + float(v)

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not self._values:
            lines.append(f"{self.name} 0")
        for key, v in sorted(self._values.items()):
            lines.append(f"{self.name}{_labels(key)} {sample(v)}")
        return "\n".join(lines)


class Gauge:
    """A value that goes up and down (``nan`` until set); ``combine`` says how the values of
    several processes merge (``"sum"``, ``"min"`` or ``"max"``).

    >>> g = Gauge("model_version", "version", combine="min"); g.set(3); g.get()
    3.0
    >>> g.merge(2.0); g.merge(math.nan); g.get()
    2.0
    """

    def __init__(self, name: str, help_: str, combine: str = "sum") -> None:
        self.name, self.help, self.combine = name, help_, combine
        self._value = math.nan

    def set(self, value: float) -> None:
        self._value = float(value)

    def get(self) -> float:
        return self._value

    def state(self) -> float:
        return self._value

    def merge(self, value: float) -> None:
        """Combine another process's value (``nan``: not set there) into this one."""
        if math.isnan(value):
            return
        if math.isnan(self._value):
            self._value = float(value)
        elif self.combine == "sum":
            self._value += value
        else:
            self._value = (min if self.combine == "min" else max)(self._value, value)

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

    def state(self) -> list[Any]:
        """``[bucket counts, sum]`` (JSON-able, for :meth:`merge` in another process)."""
        return [list(self._counts), self._sum]

    def merge(self, state: list[Any]) -> None:
        """Add another histogram's :meth:`state` (same buckets)."""
        counts, total = state
        if len(counts) != len(self._counts):
            raise ValueError(f"histogram {self.name}: {len(counts)} buckets to merge, "
                             f"expected {len(self._counts)}")
        for i, c in enumerate(counts):
            self._counts[i] += int(c)
        self._sum += float(total)
        self._count += sum(int(c) for c in counts)

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

    _HELP = {"process_cpu_seconds_total": ("counter", "Total user and system CPU time spent "
                                           "in seconds."),
             "process_start_time_seconds": ("gauge", "Start time of the process since unix "
                                            "epoch in seconds."),
             "process_virtual_memory_bytes": ("gauge", "Virtual memory size in bytes."),
             "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
             "process_open_fds": ("gauge", "Number of open file descriptors.")}

    def __init__(self) -> None:
        self._start = _process_start_time()
        self._merged: dict[str, float] | None = None

    def state(self) -> dict[str, float]:
        """The current values by metric name (read now)."""
        t = os.times()
        values = {"process_cpu_seconds_total": t.user + t.system,
                  "process_start_time_seconds": self._start}
        try:
            with open("/proc/self/statm", "rb") as f:
                vms, rss = (int(x) * os.sysconf("SC_PAGE_SIZE") for x in f.read().split()[:2])
            values.update(process_virtual_memory_bytes=vms, process_resident_memory_bytes=rss,
                          process_open_fds=len(os.listdir("/proc/self/fd")))
        except OSError:
            pass
        return values

    def merge(self, state: dict[str, float]) -> None:
        """Make :meth:`render` show a group of processes: this one's values plus
        ``state``'s (another process's), the earliest start time (memory is each process's
        resident set, so pages they share count once per process)."""
        merged = self._merged if self._merged is not None else self.state()
        for name, v in state.items():
            if name not in merged:
                merged[name] = v
            elif name == "process_start_time_seconds":
                merged[name] = min(merged[name], v)
            else:
                merged[name] += v
        self._merged = merged

    def render(self) -> str:
        values = self._merged if self._merged is not None else self.state()
        return "\n".join(f"# HELP {n} {self._HELP[n][1]}\n# TYPE {n} {self._HELP[n][0]}\n"
                         f"{n} {sample(float(v))}" for n, v in values.items() if n in self._HELP)


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
        self.model_version = Gauge("freshrec_model_version", "registry version being served",
                                   combine="min")
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
                                      "registry versions found damaged (skipped)",
                                      combine="max")
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

    #: What the parent of a worker pool counts for the pool (it follows the registry and
    #: writes the impression log); every other metric is merged over the workers.
    POOL_PARENT = ("updates", "update_errors", "delta_apply", "damaged_versions", "impressions")
    _MERGED = ("latency", "predict", "requests", "errors", "candidates", "model_version",
               "swap", "impressions_dropped", "in_flight", "shed", "queue_wait", "slow_clients")

    def _parts(self) -> list[Counter | Gauge | Histogram]:
        return [self.latency, self.predict, self.requests, self.errors, self.candidates,
                self.model_version, self.freshness, self.delta_apply, self.swap, self.updates,
                self.update_errors, self.damaged_versions, self.impressions,
                self.impressions_dropped, self.in_flight, self.shed, self.queue_wait,
                self.slow_clients]

    def snapshot(self) -> dict[str, Any]:
        """Every value as JSON-able data (what :meth:`pooled` merges), read now."""
        snap: dict[str, Any] = {a: getattr(self, a).state()
                                for a in self._MERGED + self.POOL_PARENT}
        snap["event_time"] = self.event_time
        snap["process"] = self.process.state()
        return snap

    @classmethod
    def pooled(cls, parent: Mapping[str, Any], workers: Sequence[Mapping[str, Any]]
               ) -> ServeMetrics:
        """The metrics of a worker pool (``serve --workers N``) from its processes'
        :meth:`snapshot`: counters and histograms of the request path added over the workers
        (exactly), gauges combined (``in_flight`` added, ``model_version`` the lowest a worker
        serves, freshness the stalest), :data:`POOL_PARENT` metrics the parent's, process
        metrics added over every process.

        >>> a, b, p = ServeMetrics(), ServeMetrics(), ServeMetrics()
        >>> a.requests.inc(3, code="200"); b.requests.inc(4, code="200"); p.impressions.inc(7)
        >>> m = ServeMetrics.pooled(p.snapshot(), [a.snapshot(), b.snapshot()])
        >>> m.requests.get(code="200"), m.impressions.get()
        (7.0, 7.0)
        """
        out = cls()
        for attr in cls.POOL_PARENT:
            getattr(out, attr).merge(parent[attr])
        times = []
        for snap in workers:
            for attr in cls._MERGED:
                getattr(out, attr).merge(snap[attr])
            if snap["event_time"] is not None:
                times.append(float(snap["event_time"]))
        out.event_time = min(times) if times else None
        out.process._merged = dict(parent["process"])
        for snap in workers:
            out.process.merge(snap["process"])
        return out

    def render(self) -> str:
        if self.event_time is not None:
            self.freshness.set(max(0.0, time.time() - self.event_time))
        parts: list[Counter | Gauge | Histogram | ProcessMetrics] = [*self._parts(),
                                                                     self.process]
        from freshrec.store.served import render_metrics  # tables served from Redis

        return "\n".join(p.render() for p in parts) + "\n" + render_metrics()
