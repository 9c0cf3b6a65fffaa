"""Impression events: what was served, written to the event log off the request path.

Every scored request becomes one ``impression`` event (schema v1,
:mod:`freshrec.stream.events`) with the request id, the user and its features, each
candidate with its features and position, the model version and the timestamp, so that the
joiner can join clicks to it by ``(request_id, item_id)``. The event also carries the scores
the server gave, ``"scores": [...]`` in candidate order (float32 precision; optional, older
logs lack it): :mod:`freshrec.ops.serving` joins them with the clicks to measure the serving AUC. The request thread only appends a
tuple to a bounded deque (no lock, no thread wake-up); a writer thread wakes every
``interval_s`` (or when a batch is waiting), builds, encodes and appends the events in
batches. An event is spliced from pre-encoded pieces where the predictor's feature index
has them (each candidate's JSON around its position, :func:`impression_record`), so
writing it costs a few microseconds of the GIL instead of rebuilding 100 candidate dicts.

Examples
--------
>>> import tempfile
>>> from freshrec.stream import FileLog
>>> from freshrec.stream.events import decode
>>> from freshrec.serve.request import ScoreRequest
>>> log = FileLog(tempfile.mkdtemp())
>>> w = ImpressionWriter(log); w.start()
>>> w.submit(ScoreRequest(request_id="r1", user={"age": 3}, candidates=[{"item_id": 7,
...          "cat": 2}], user_id=5), version=4, timestamp=100.0, scores=[0.25])
True
>>> w.close()
>>> ev = decode(log.read(0, 0)[0].value)
>>> ev["request_id"], ev["candidates"], ev["model_version"], ev["scores"]
('r1', [{'item_id': 7, 'position': 0, 'features': {'cat': 2}}], 4, [0.25])
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.request import ScoreRequest
from freshrec.stream.base import Log
from freshrec.stream.events import SCHEMA_VERSION, encode, partition_for

__all__ = ["ImpressionWriter", "impression_event", "impression_record"]

log = logging.getLogger(__name__)


def _scores_json(scores: Sequence[float]) -> bytes:
    """The scores as a JSON array of float32 values (shortest form, a few microseconds)."""
    return orjson.dumps(np.asarray(scores, np.float32), option=orjson.OPT_SERIALIZE_NUMPY)


def _head(req: ScoreRequest, version: int | None, timestamp: float) -> dict[str, Any]:
    """The impression event's fields but the scores and the candidates."""
    ev: dict[str, Any] = {
        "v": SCHEMA_VERSION, "type": "impression", "event_id": f"imp-{req.request_id}",
        "request_id": req.request_id,
        "user_id": req.user_id if req.user_id is not None else "",
        "timestamp": timestamp, "user": req.user,
    }
    if version is not None:
        ev["model_version"] = version
    return ev


def impression_event(req: ScoreRequest, version: int | None, timestamp: float,
                     scores: Sequence[float] | None = None) -> dict[str, Any]:
    """The impression event of a served request (``scores``: what the server answered)."""
    cands = []
    for j, c in enumerate(req.candidates):
        feats = {k: v for k, v in c.items() if k != "item_id" and k != "position"}
        cands.append({"item_id": c["item_id"], "position": j, "features": feats})
    ev = _head(req, version, timestamp)
    if scores is not None:
        ev["scores"] = orjson.loads(_scores_json(scores))
    ev["candidates"] = cands
    return ev


def impression_record(req: ScoreRequest, version: int | None, timestamp: float,
                      scores: Sequence[float] | None = None) -> bytes:
    """The encoded impression event of a served request: ``encode(impression_event(...))``,
    spliced from ``req.fragments`` when the predictor set them (the same JSON object).

    >>> from freshrec.stream.events import decode
    >>> r = ScoreRequest(request_id="r", user={"a": 1}, candidates=[{"item_id": 3, "c": 1}])
    >>> r.fragments = [(b'{"item_id":3,"position":', b',"features":{"c":1}}')]
    >>> decode(impression_record(r, 2, 5.0, [0.5])) == impression_event(r, 2, 5.0, [0.5])
    True
    """
    frags = req.fragments
    if frags is None or len(frags) != len(req.candidates) or None in frags:
        return encode(impression_event(req, version, timestamp, scores))
    head = orjson.dumps(_head(req, version, timestamp))
    if scores is not None:
        head = b"".join((head[:-1], b',"scores":', _scores_json(scores), b"}"))
    cands = b",".join([h + b"%d" % j + t for j, (h, t) in enumerate(frags)])  # type: ignore[misc]
    return b"".join((head[:-1], b',"candidates":[', cands, b"]}"))


class ImpressionWriter:
    """Writes impression events to a :class:`~freshrec.stream.Log` from a background thread.

    Parameters
    ----------
    log : Log
    max_queue : int
        Events waiting to be written; :meth:`submit` drops (and counts) beyond it.
    metrics : ServeMetrics, optional
    batch : int
        Most events appended at once (a full batch wakes the writer early).
    interval_s : float
        How long queued events may wait for the writer (it wakes at least this often); no
        thread is woken per request.
    """

    def __init__(self, log: Log, *, max_queue: int = 100_000,
                 metrics: ServeMetrics | None = None, batch: int = 512,
                 interval_s: float = 0.02) -> None:
        self.log = log
        self.metrics = metrics
        self.batch = batch
        self.max_queue = max_queue
        self.interval_s = interval_s
        self._pending: deque[tuple[ScoreRequest, int | None, float, Any]] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failed = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="freshrec-impressions",
                                        daemon=True)
        self._thread.start()

    def submit(self, req: ScoreRequest, *, version: int | None, timestamp: float,
               scores: Sequence[float] | None = None) -> bool:
        """Queue the impression of ``req`` (with the ``scores`` it was answered);
        ``False`` (and counted) when the queue is full."""
        pending = self._pending
        if len(pending) >= self.max_queue:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.impressions_dropped.inc()
            return False
        pending.append((req, version, timestamp, scores))
        if len(pending) == self.batch:
            self._wake.set()
        return True

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            stop = self._stop
            while pending:
                items: list[tuple[ScoreRequest, int | None, float, Any]] = []
                while pending and len(items) < self.batch:
                    items.append(pending.popleft())
                self._write(items)
            if stop:
                return

    def _write(self, items: list[tuple[ScoreRequest, int | None, float, Any]]) -> None:
        parts: dict[int, list[bytes]] = {}
        n = self.log.partitions
        for req, version, ts, scores in items:
            p = partition_for(req.request_id, n) if n > 1 else 0
            try:
                rec = impression_record(req, version, ts, scores)
            except Exception:  # noqa: BLE001 - one bad event must not stop the writer
                self.failed += 1
                log.exception("impression event of request %r not encodable", req.request_id)
                continue
            parts.setdefault(p, []).append(rec)
        for p, records in parts.items():
            try:
                self.log.append(records, partition=p)
                self.written += len(records)
                if self.metrics is not None:
                    self.metrics.impressions.inc(len(records))
            except Exception:  # noqa: BLE001 - the server keeps serving; the loss is counted
                self.failed += len(records)
                if self.metrics is not None:
                    self.metrics.errors.inc(len(records), kind="impression_write")
                log.exception("impression log append failed records=%d", len(records))

    def close(self) -> None:
        """Write what is queued, stop the thread and flush the log."""
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        flush = getattr(self.log, "flush", None)
        if flush is not None:
            flush()
