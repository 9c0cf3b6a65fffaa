"""The serving side's own AUC, from the logs of the running system.

The server's impression events carry the scores it answered and the model version that
scored them (:mod:`freshrec.serve.impressions`); the joiner's examples carry the labels the
clicks gave each candidate. A :class:`ServedScores` tails both logs (the ``join`` section's
``source`` and ``output``), keeps each scored impression until its examples come out of the
joiner, and returns every joined example's served score, label, event time and version. A
:class:`ServingMonitor` feeds them in event-time order to a
:class:`~freshrec.ops.rollback.RollbackGuard`, which measures the AUC per window and, given
a registry, rolls back a version whose serving AUC dropped (what ``freshrec watch`` runs with
``ops.rollback.enabled``).

Nothing in the joiner changes: an impression without scores (an older log, or a server of
an older version) is left out of the serving AUC and counted.

Examples
--------
>>> import tempfile, orjson
>>> from freshrec.ops.config import RollbackConfig
>>> from freshrec.stream.events import encode_examples, examples_to_record_batch
>>> from freshrec.stream.open import open_log
>>> d = tempfile.mkdtemp()
>>> events, examples = open_log(f"file:{d}/ev"), open_log(f"file:{d}/ex")
>>> _ = events.append([orjson.dumps({"type": "impression", "request_id": "r1",
...     "timestamp": 60.5, "model_version": 3, "scores": [0.9, 0.2]})])
>>> _ = examples.append([encode_examples(examples_to_record_batch([
...     {"request_id": "r1", "position": p, "event_time": 60, "click": float(p == 0)}
...     for p in (0, 1)]))])
>>> got = ServedScores(f"file:{d}/ev", f"file:{d}/ex", "click").poll()
>>> got.scores.tolist(), got.labels.tolist(), got.versions.tolist(), got.event_time.tolist()
([0.9, 0.2], [1.0, 0.0], [3, 3], [60.0, 60.0])
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from freshrec.errors import FreshrecError
from freshrec.ops.joinstate import open_existing
from freshrec.ops.rollback import RollbackGuard

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig
    from freshrec.stream.base import Log

__all__ = ["Served", "ServedScores", "ServingMonitor", "serving_windows"]

log = logging.getLogger(__name__)

#: records read from a log at once
_CHUNK = 2000


@dataclass(frozen=True)
class Served:
    """Joined examples with the score the server gave them: event time (s), score, label
    and the model version that scored them (one array entry per example)."""

    event_time: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    versions: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.size)


def _empty() -> Served:
    return Served(np.empty(0), np.empty(0), np.empty(0), np.empty(0, np.int64))


class _Tail:
    """A reader of every partition of a log spec from where it left off; the log is opened
    once it exists (a watcher may start before the system writes)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.log: Log | None = None
        self.offsets: list[int] = []

    def read(self) -> list[bytes]:
        """Every record appended since the previous call (``[]`` while there is no log)."""
        if self.log is None:
            self.log = open_existing(self.spec)
            if self.log is None:
                return []
            self.offsets = [0] * self.log.partitions
        out: list[bytes] = []
        try:
            for p in range(self.log.partitions):
                while True:
                    recs = self.log.read(p, self.offsets[p], _CHUNK)
                    if not recs:
                        break
                    out += [r.value for r in recs]
                    self.offsets[p] = recs[-1].offset + 1
                    if len(recs) < _CHUNK:
                        break
        except (FreshrecError, OSError) as e:
            log.warning("serving AUC: log %s cannot be read: %s", self.spec, e)
        return out

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class ServedScores:
    """Joins the served scores of the impressions in ``events`` with the labels of the
    examples in ``examples`` (see the module docstring).

    Parameters
    ----------
    events : str
        The log spec the server writes impressions to (``join.source``).
    examples : str
        The joiner's output (``join.output``).
    label : str
        The label column the AUC is measured on (the config's first label).
    horizon_s : float
        Impressions older than the newest example's event time by more than this are
        forgotten (their examples would have come out of the joiner by then).
    """

    def __init__(self, events: str, examples: str, label: str, *,
                 horizon_s: float = 3600.0) -> None:
        self.label = label
        self.horizon_s = horizon_s
        self._events = _Tail(events)
        self._examples = _Tail(examples)
        #: request id -> (impression time, version, scores)
        self._scored: dict[Any, tuple[float, int, list[float]]] = {}
        #: (impression time, request id) in arrival order, for forgetting the old ones
        self._order: deque[tuple[float, Any]] = deque()
        self._newest = -np.inf
        #: impressions that carried no scores or no model version
        self.unscored = 0
        #: joined examples whose impression was not found (unscored, or before the start)
        self.unmatched = 0
        #: examples matched so far
        self.matched = 0

    def _read_impressions(self) -> None:
        for value in self._events.read():
            if b'"scores"' not in value:  # clicks, and impressions without scores
                if b'"impression"' in value:
                    self.unscored += 1
                continue
            with contextlib.suppress(ValueError, TypeError):
                ev = orjson.loads(value)
                scores, version = ev.get("scores"), ev.get("model_version")
                if ev.get("type") != "impression" or not isinstance(scores, list) \
                        or not isinstance(version, int):
                    self.unscored += 1
                    continue
                ts = float(ev["timestamp"])
                self._scored[ev["request_id"]] = (ts, version, scores)
                self._order.append((ts, ev["request_id"]))

    def poll(self) -> Served:
        """The examples the joiner wrote since the previous call, with their served scores."""
        from freshrec.stream.events import decode_examples

        self._read_impressions()
        values = self._examples.read()
        if not values:
            return _empty()
        rb, _ = decode_examples(values)
        names = [] if rb is None else rb.schema.names
        if rb is None or not {"request_id", "position", "event_time", self.label} <= set(names):
            return _empty()
        rids = rb.column("request_id").to_pylist()
        pos = rb.column("position").to_pylist()
        times = rb.column("event_time").to_pylist()
        labels = rb.column(self.label).to_pylist()
        t, s, y, v = [], [], [], []
        scored = self._scored
        for rid, p, et, lab in zip(rids, pos, times, labels, strict=True):
            hit = scored.get(rid)
            if hit is None or p is None or lab is None or not 0 <= p < len(hit[2]):
                self.unmatched += 1
                continue
            t.append(float(et))
            s.append(hit[2][p])
            y.append(float(lab))
            v.append(hit[1])
        self.matched += len(s)
        if t:
            self._newest = max(self._newest, max(t))
            order, oldest = self._order, self._newest - self.horizon_s
            # impressions arrive about in time order: forget from the front (one a little
            # out of order waits for the ones before it)
            while order and order[0][0] < oldest:
                ts, rid = order.popleft()
                if rid in scored and scored[rid][0] == ts:
                    del scored[rid]
        return Served(np.asarray(t), np.asarray(s, np.float64), np.asarray(y),
                      np.asarray(v, np.int64))

    @property
    def pending(self) -> int:
        """Scored impressions kept, waiting for their examples."""
        return len(self._scored)

    def close(self) -> None:
        self._events.close()
        self._examples.close()


class ServingMonitor:
    """Feeds the served scores of :class:`ServedScores` to a
    :class:`~freshrec.ops.rollback.RollbackGuard` window by window, in event-time order.

    Parameters
    ----------
    scores : ServedScores
    guard : RollbackGuard
        Measures the serving AUC per window (its ``history``); rolls back when it has a
        registry.
    """

    def __init__(self, scores: ServedScores, guard: RollbackGuard) -> None:
        self.scores = scores
        self.guard = guard
        self._lock = threading.Lock()

    def poll(self) -> int:
        """Read what is new and feed it to the guard; returns the examples fed."""
        with self._lock:
            got = self.scores.poll()
            if not len(got):
                return 0
            w = self.guard.config.window_s
            win = np.floor(got.event_time / w)
            order = np.lexsort((got.versions, win))
            keys = np.stack([win[order], got.versions[order]], axis=1)
            cuts = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
            for idx in np.split(order, cuts):
                self.guard.observe(float(got.event_time[idx[0]]), got.scores[idx],
                                   got.labels[idx], version=int(got.versions[idx[0]]))
            return len(got)

    def series(self) -> dict[str, list[list[float]]]:
        """``serve.auc`` (the AUC of each closed window, at the window's start) and
        ``serve.auc_version`` (the version that served most of it)."""
        with self._lock:
            hist = list(self.guard.history)
        auc = [[h[0], h[1]] for h in hist if np.isfinite(h[1])]
        ver = [[h[0], float(h[2])] for h in hist if np.isfinite(h[1])]
        return {"serve.auc": auc, "serve.auc_version": ver}


def serving_windows(config: FreshrecConfig) -> list[tuple[float, float, int, bool | None]]:
    """The serving AUC of every closed window in the logs of ``config``'s ``join`` section
    (``[]`` without them), as :attr:`RollbackGuard.history
    <freshrec.ops.rollback.RollbackGuard.history>`; nothing is rolled back."""
    jc = config.join
    if not (jc.source and jc.output):
        return []
    scores = ServedScores(jc.source, jc.output, config.features.labels[0])
    try:
        mon = ServingMonitor(scores, RollbackGuard(config.ops.rollback, None))
        mon.poll()
        return list(mon.guard.history)
    finally:
        scores.close()
