"""Prometheus text of the serving metrics: exact values past a million, process metrics."""

from __future__ import annotations

import math
import os
import time

import pytest

from freshrec.serve.metrics import Counter, Gauge, Histogram, ProcessMetrics, ServeMetrics, sample


def _value(text: str, name: str) -> str:
    """The sample of series ``name`` (its whole name, labels included) in ``text``."""
    found = [line.rsplit(" ", 1)[1] for line in text.splitlines()
             if line.startswith(name + " ")]
    assert len(found) == 1, (name, text)
    return found[0]


@pytest.mark.parametrize("n", [1_000_001, 12_345_678, 2**40 + 3])
def test_counters_are_exact_past_a_million(n):
    c = Counter("requests_total", "requests")
    c.inc(n - 1, code="200")
    c.inc(code="200")
    assert _value(c.render(), 'requests_total{code="200"}') == str(n)


def test_histogram_sum_and_count_are_exact():
    h = Histogram("lat_seconds", "latency", buckets=(0.001,))
    for _ in range(1_000_003):
        h.observe(0.25)
    text = h.render()
    assert _value(text, "lat_seconds_count") == "1000003"
    assert _value(text, "lat_seconds_sum") == "250000.75"
    h.observe(1e-9)
    assert float(_value(h.render(), "lat_seconds_sum")) == 250000.75 + 1e-9


@pytest.mark.parametrize("value", [0.1 + 0.2, 1e-300, 123456.7890123, 2.0**60, -3.0])
def test_a_sample_reads_back_as_the_same_float(value):
    assert float(sample(value)) == value


def test_gauge_prints_exact_values():
    g = Gauge("model_version", "version")
    g.set(1234567)
    assert _value(g.render(), "model_version") == "1234567"
    g.set(math.inf)
    assert _value(g.render(), "model_version") == "+Inf"


def test_process_metrics_are_exported():
    text = ServeMetrics().render()
    start = float(_value(text, "process_start_time_seconds"))
    assert time.time() - 7 * 86400 < start <= time.time()
    assert float(_value(text, "process_cpu_seconds_total")) > 0
    if os.path.exists("/proc/self/statm"):
        assert int(_value(text, "process_resident_memory_bytes")) > 1 << 20
        assert int(_value(text, "process_open_fds")) > 0
    assert "# TYPE process_cpu_seconds_total counter" in text


def test_pooled_metrics_add_counters_and_histograms_and_combine_gauges():
    parent, a, b = ServeMetrics(), ServeMetrics(), ServeMetrics()
    for m, n in ((a, 1_000_003), (b, 2)):
        m.requests.inc(n, route="score", code="200")
        m.latency.observe(0.0004)
        m.in_flight.set(n)
        m.model_version.set(n + 10)
    a.requests.inc(route="score", code="503")
    b.latency.observe(3.0)
    a.event_time, b.event_time = 100.0, 50.0
    parent.impressions.inc(9)
    parent.updates.inc(kind="delta")
    a.updates.inc(5, kind="delta")  # a worker's own swaps are not the pool's updates
    m = ServeMetrics.pooled(parent.snapshot(), [a.snapshot(), b.snapshot()])
    text = m.render()
    assert _value(text, 'freshrec_requests_total{code="200",route="score"}') == "1000005"
    assert _value(text, 'freshrec_requests_total{code="503",route="score"}') == "1"
    assert _value(text, 'freshrec_request_seconds_bucket{le="0.0005"}') == "2"
    assert _value(text, 'freshrec_request_seconds_bucket{le="+Inf"}') == "3"
    assert _value(text, "freshrec_request_seconds_count") == "3"
    assert _value(text, "freshrec_in_flight") == "1000005"
    assert _value(text, "freshrec_model_version") == "12"
    assert _value(text, "freshrec_impressions_total") == "9"
    assert _value(text, 'freshrec_updates_total{kind="delta"}') == "1"
    assert m.event_time == 50.0
    cpu = float(_value(text, "process_cpu_seconds_total"))
    assert cpu >= 3 * float(_value(ProcessMetrics().render(), "process_cpu_seconds_total")) - 1
