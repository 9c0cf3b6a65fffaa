"""Impression events: what was served, written to the event log off the request path.

Every scored request becomes one ``impression`` event (schema v1,
:mod:`freshrec.stream.events`) with the request id, the user and its features, each
candidate with its features and position, the model version and the timestamp, so that the
joiner can join clicks to it by ``(request_id, item_id)``. The request thread only puts a
tuple on a bounded queue; a writer thread builds, encodes and appends the events in batches.

Examples
--------
>>> import tempfile
>>> from freshrec.stream import FileLog
>>> from freshrec.stream.events import decode
>>> from freshrec.serve.request import ScoreRequest
>>> log = FileLog(tempfile.mkdtemp())
>>> w = ImpressionWriter(log); w.start()
>>> w.submit(ScoreRequest(request_id="r1", user={"age": 3}, candidates=[{"item_id": 7,
...          "cat": 2}], user_id=5), version=4, timestamp=100.0)
True
>>> w.close()
>>> ev = decode(log.read(0, 0)[0].value)
>>> ev["request_id"], ev["candidates"], ev["model_version"]
('r1', [{'item_id': 7, 'position': 0, 'features': {'cat': 2}}], 4)
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.request import ScoreRequest
from freshrec.stream.base import Log
from freshrec.stream.events import SCHEMA_VERSION, encode, partition_for

__all__ = ["ImpressionWriter", "impression_event"]

log = logging.getLogger(__name__)


def impression_event(req: ScoreRequest, version: int | None, timestamp: float) -> dict[str, Any]:
    """The impression event of a served request."""
    cands = []
    for j, c in enumerate(req.candidates):
        feats = {k: v for k, v in c.items() if k != "item_id" and k != "position"}
        cands.append({"item_id": c["item_id"], "position": j, "features": feats})
    ev: dict[str, Any] = {
        "v": SCHEMA_VERSION, "type": "impression", "event_id": f"imp-{req.request_id}",
        "request_id": req.request_id,
        "user_id": req.user_id if req.user_id is not None else "",
        "timestamp": timestamp, "user": req.user, "candidates": cands,
    }
    if version is not None:
        ev["model_version"] = version
    return ev


class ImpressionWriter:
    """Writes impression events to a :class:`~freshrec.stream.Log` from a background thread.

    Parameters
    ----------
    log : Log
    max_queue : int
        Events waiting to be written; :meth:`submit` drops (and counts) beyond it.
    metrics : ServeMetrics, optional
    batch : int
        Most events appended at once.
    """

    def __init__(self, log: Log, *, max_queue: int = 100_000,
                 metrics: ServeMetrics | None = None, batch: int = 512) -> None:
        self.log = log
        self.metrics = metrics
        self.batch = batch
        self._queue: queue.Queue[tuple[ScoreRequest, int | None, float] | None] = \
            queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failed = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="freshrec-impressions",
                                        daemon=True)
        self._thread.start()

    def submit(self, req: ScoreRequest, *, version: int | None, timestamp: float) -> bool:
        """Queue the impression of ``req``; ``False`` (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((req, version, timestamp))
            return True
        except queue.Full:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.impressions_dropped.inc()
            return False

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            items = []
            while True:
                if item is None:
                    stop = True
                else:
                    items.append(item)
                if stop or len(items) >= self.batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if items:
                self._write(items)

    def _write(self, items: list[tuple[ScoreRequest, int | None, float]]) -> None:
        parts: dict[int, list[bytes]] = {}
        n = self.log.partitions
        for req, version, ts in items:
            p = partition_for(req.request_id, n) if n > 1 else 0
            parts.setdefault(p, []).append(encode(impression_event(req, version, ts)))
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
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        flush = getattr(self.log, "flush", None)
        if flush is not None:
            flush()
