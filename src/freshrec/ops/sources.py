"""Readers of what the running system writes: ``metrics.jsonl`` lines in run directories,
registry manifests, Prometheus text from ``/metrics`` endpoints, and range queries to a
Prometheus server's HTTP API (``/api/v1/query_range``).

Nothing here writes; a damaged line or manifest is skipped (and counted), an unreachable
endpoint reads as nothing, so a dashboard or a watcher keeps running beside a system that is
partly down.

Examples
--------
>>> text = '''# TYPE freshrec_request_seconds histogram
... freshrec_request_seconds_bucket{le="0.001"} 5
... freshrec_request_seconds_bucket{le="0.01"} 9
... freshrec_request_seconds_bucket{le="+Inf"} 10
... freshrec_model_version 3
... '''
>>> s = parse_samples(text)
>>> s[-1]
Sample(name='freshrec_model_version', labels={}, value=3.0)
>>> histogram_quantile(0.5, buckets(s, "freshrec_request_seconds"))
0.001
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshrec.errors import FreshrecError

__all__ = [
    "Sample",
    "buckets",
    "histogram_quantile",
    "http_get",
    "parse_samples",
    "prometheus_range",
    "read_metrics",
    "registry_history",
]

log = logging.getLogger(__name__)

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One line of Prometheus text: metric name, labels and value."""

    name: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (comments and bad lines skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if "}" in head:
            name, _, rest = head.partition("{")
            labels = dict(_LABEL.findall(rest))
        else:
            name, labels = head, {}
        try:
            out.append(Sample(name.strip(), labels, float(value)))
        except ValueError:
            continue
    return out


def buckets(samples: Sequence[Sample], histogram: str) -> list[tuple[float, float]]:
    """``(upper bound, cumulative count)`` of ``histogram``'s buckets, summed over labels."""
    acc: dict[float, float] = {}
    for s in samples:
        if s.name == f"{histogram}_bucket" and "le" in s.labels:
            le = math.inf if s.labels["le"] in ("+Inf", "Inf") else float(s.labels["le"])
            acc[le] = acc.get(le, 0.0) + s.value
    return sorted(acc.items())


def histogram_quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float:
    """The ``q``-quantile of a histogram as Prometheus estimates it (linear within the
    bucket; the highest finite bound when it falls in ``+Inf``); NaN with no observations."""
    if not cumulative or cumulative[-1][1] <= 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lo_bound
            if count == lo_count:
                return bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / (count - lo_count)
        lo_bound, lo_count = bound, count
    return lo_bound


def http_get(url: str, timeout_s: float = 5.0) -> str | None:
    """The body of ``GET url`` (``http://`` only) or ``None`` when it cannot be read."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise FreshrecError(f"metrics URL {url!r}: expected http://HOST:PORT/PATH")
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", (u.path or "/metrics") + (f"?{u.query}" if u.query else ""))
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def prometheus_range(url: str, expr: str, start: float, end: float, step: float
                     ) -> list[list[float]]:
    """``[[unix s, value], ...]`` of PromQL ``expr`` from ``start`` to ``end`` every ``step``
    seconds, from the Prometheus server at ``url`` (``http://HOST:PORT``): its
    ``/api/v1/query_range``. When the expression gives several series, the first one (the
    generated expressions aggregate or select one); ``[]`` when the server cannot be read or
    has no data, NaN values left out."""
    query = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}",
                                    "end": f"{end:.3f}", "step": f"{max(step, 0.001):g}"})
    body = http_get(f"{url.rstrip('/')}/api/v1/query_range?{query}")
    if body is None:
        return []
    try:
        doc = json.loads(body)
        result = doc["data"]["result"] if doc.get("status") == "success" else []
        values = result[0]["values"] if result else []
        pts = [[float(t), float(v)] for t, v in values]
    except (ValueError, KeyError, TypeError, IndexError):
        log.debug("ops: %s: unexpected answer to %r", url, expr)
        return []
    return [p for p in pts if math.isfinite(p[1])]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as fh:
        yield from enumerate(fh, start=1)


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The records of ``run_dir/metrics.jsonl`` and the number of lines that are not JSON
    objects (skipped; a line being written is one of them).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.jsonl").write_text('{"step": 1, "auc": 0.7}\\nnot json\\n')
    >>> read_metrics(d)
    ([{'step': 1, 'auc': 0.7}], 1)
    """
    path = Path(run_dir) / "metrics.jsonl"
    records, bad = [], 0
    for no, line in _lines(path):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        elif line.strip():
            bad += 1
            log.debug("ops: %s line %d is not a JSON object (skipped)", path, no)
    return records, bad


def registry_history(root: str | Path) -> list[dict[str, Any]]:
    """One dict per readable registry version, oldest first: ``version``, ``kind``,
    ``created_unix_s``, ``event_time``, ``metrics`` (published with it), ``examples``,
    ``rolled_back_from`` and ``rollback_to`` (for a rollback, the version restored)."""
    from freshrec.sync.registry import DAMAGE_ERRORS, Registry, VersionKind

    reg = Registry(root)
    out = []
    for v in reg.versions():
        try:
            m = reg.manifest(v)
        except DAMAGE_ERRORS:
            continue
        out.append({"version": m.version, "kind": m.kind.value,
                    "created_unix_s": m.created_unix_s, "event_time": m.event_time,
                    "metrics": dict(m.meta.get("metrics") or {}),
                    "examples": m.meta.get("examples"),
                    "rolled_back_from": m.rolled_back_from,
                    "rollback_to": m.base if m.kind is VersionKind.ROLLBACK else None})
    return out
