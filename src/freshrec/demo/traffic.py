"""The demo's traffic driver: simulated users' requests to the server, and the clicks they
get to the event log.

Each request is an impression of the :class:`~freshrec.data.simulate.ClickStreamSimulator`
(its user, features and candidates); the driver posts it to ``/score``, draws each
candidate's click from the simulator's true click probability (``true_p``) and appends the
click to the event log when its delay (log-normal, shorter than the label window) has
passed, with event time = the request's time + delay. The server's impression carries the
same ``request_id``, so the joiner joins the click to what the server logged.

The file log has one writer per partition: the server writes impressions to partition 0 (the
driver only sends request ids that :func:`~freshrec.stream.events.partition_for` maps there)
and the driver writes clicks to the last partition.
"""

from __future__ import annotations

import dataclasses
import heapq
import http.client
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
from freshrec.stream.base import Log
from freshrec.stream.events import decode, encode, partition_for

__all__ = ["DriverStats", "TrafficDriver"]

log = logging.getLogger(__name__)


@dataclass
class DriverStats:
    """What the driver measured since the last :meth:`TrafficDriver.take` (counts are deltas)."""

    requests: int = 0
    errors: int = 0
    clicks_drawn: int = 0
    clicks_written: int = 0
    latencies: list[float] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    true_p: list[np.ndarray] = field(default_factory=list)
    last_error: str = ""


class TrafficDriver:
    """Sends simulated requests to a server and writes the clicks they get to the event log.

    Parameters
    ----------
    url : str
        ``http://host:port`` of ``freshrec serve``.
    events : Log
        The event log the server writes impressions to; clicks go to its last partition.
    simulator : SimulatorConfig
        The users, items and candidates of the requests, and their rate: the driver sends
        ``requests_per_s`` requests per wall second.
    window_s : int
        The joiner's label window: every click is written within it.

    The driver runs on a thread (:meth:`start` / :meth:`stop`); :meth:`take` hands over what
    was measured since the last call.
    """

    def __init__(self, url: str, events: Log, simulator: SimulatorConfig, window_s: int
                 ) -> None:
        self.url = url
        self.events = events
        self.simulator = simulator
        self.window_s = window_s
        self._stats = DriverStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- public
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_safe, name="freshrec-demo-driver",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def take(self) -> DriverStats:
        """What was measured since the previous call (counts are deltas)."""
        with self._lock:
            out, self._stats = self._stats, DriverStats(last_error=self._stats.last_error)
        return out

    # -- the loop
    def _run_safe(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by the demo's monitor
            self.error = e
            log.exception("demo driver failed")

    def _run(self) -> None:
        # the simulator's requests only, from now on: the driver draws the clicks itself, so the
        # simulator's own actions and their delivery noise are left out
        sim = ClickStreamSimulator(dataclasses.replace(
            self.simulator, start_time=int(time.time()), duplicate_rate=0.0,
            malformed_rate=0.0, max_jitter_s=0.0, late_click_rate=0.0))
        seed, rate = self.simulator.seed, self.simulator.requests_per_s
        rng = np.random.default_rng(seed + 1)
        parts = self.events.partitions
        action_part = parts - 1
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        pending: list[tuple[float, int, bytes]] = []  # (due wall time, seq, action event)
        seq = 0
        k = 0
        max_delay = max(0.2, 0.8 * self.window_s)
        next_t = time.monotonic()

        def flush_due() -> None:
            now = time.time()
            due = []
            while pending and pending[0][0] <= now:
                due.append(heapq.heappop(pending)[2])
            if due:
                self.events.append(due, partition=action_part)
                with self._lock:
                    self._stats.clicks_written += len(due)

        for _, payload in sim.records():
            if self._stop.is_set():
                break
            ev = decode(payload)
            if ev.get("type") != "impression":
                continue
            while True:  # wait for the send time, writing clicks as they fall due
                flush_due()
                wait = next_t - time.monotonic()
                if wait <= 0 or self._stop.is_set():
                    break
                nxt = pending[0][0] - time.time() if pending else wait
                time.sleep(max(0.0, min(wait, nxt, 0.05)))
            if self._stop.is_set():
                break
            while True:  # a request id whose impression the server writes to partition 0
                rid = f"demo-{seed}-{k}"
                k += 1
                if parts == 1 or partition_for(rid, parts) == 0:
                    break
            cands = ev["candidates"]
            true_p = np.array([float(x.get("true_p", 0.0)) for x in cands])
            body = {"request_id": rid, "user_id": ev["user_id"], "user": ev["user"],
                    "candidates": [{"item_id": x["item_id"], **x.get("features", {})}
                                   for x in cands]}
            now = time.time()
            body["now"] = now
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/score", body=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                status, data = 0, str(e).encode()
            latency = time.perf_counter() - t0
            next_t += 1.0 / rate
            if next_t < time.monotonic() - 1.0:  # far behind: do not burst to catch up
                next_t = time.monotonic()
            if status != 200:
                with self._lock:
                    self._stats.errors += 1
                    self._stats.last_error = f"HTTP {status}: {data[:200]!r}"
                continue
            scores = np.asarray(json.loads(data)["scores"], dtype=np.float64)
            clicked = rng.random(len(true_p)) < true_p
            for j in np.flatnonzero(clicked).tolist():
                delay = min(0.7 * math.exp(rng.normal(0.0, 0.6)), max_delay)
                item = cands[j]["item_id"]
                action = encode({"v": 1, "type": "action", "event_id": f"c-{rid}-{item}",
                                 "request_id": rid, "item_id": item, "action": "click",
                                 "timestamp": round(now + delay, 3)})
                heapq.heappush(pending, (now + delay, seq, action))
                seq += 1
            with self._lock:
                s = self._stats
                s.requests += 1
                s.clicks_drawn += int(clicked.sum())
                s.latencies.append(latency)
                s.scores.append(scores)
                s.labels.append(clicked.astype(np.float64))
                s.true_p.append(true_p)
        conn.close()
