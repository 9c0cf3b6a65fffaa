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
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from freshrec._io import atomic_write_bytes
from freshrec.errors import FreshrecError, InputError
from freshrec.ops.joinstate import open_existing
from freshrec.ops.rollback import RollbackGuard

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig
    from freshrec.ops.alerts import Watcher
    from freshrec.stream.base import Log

__all__ = ["Served", "ServedScores", "ServingMonitor", "WatchCheckpoint", "serving_windows"]

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
            if len(self.offsets) != self.log.partitions:  # restored offsets are kept
                if self.offsets:
                    log.warning("serving AUC: log %s has %d partitions, the checkpoint %d: "
                                "read from the start", self.spec, self.log.partitions,
                                len(self.offsets))
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

    def state(self) -> dict[str, Any]:
        """The read positions of both logs, the scored impressions still waiting for their
        examples (at most ``horizon_s`` of them) and the counters, JSON-able."""
        return {"events": self._events.spec, "examples": self._examples.spec,
                "label": self.label, "event_offsets": self._events.offsets,
                "example_offsets": self._examples.offsets,
                "scored": [[rid, *hit] for rid, hit in self._scored.items()],
                "order": [list(o) for o in self._order],
                "newest": None if self._newest == -np.inf else self._newest,
                "unscored": self.unscored, "unmatched": self.unmatched,
                "matched": self.matched}

    def restore(self, state: dict[str, Any]) -> None:
        """Take up :meth:`state`; raises ``KeyError``/``TypeError``/``ValueError`` on a
        state that is not one, and ``ValueError`` when it was read from other logs."""
        was = (state["events"], state["examples"], state["label"])
        now = (self._events.spec, self._examples.spec, self.label)
        if was != now:
            raise ValueError(f"it was written for the logs and label {was}, not {now}")
        self._events.offsets = [int(o) for o in state["event_offsets"]]
        self._examples.offsets = [int(o) for o in state["example_offsets"]]
        self._scored = {rid: (float(ts), int(v), [float(x) for x in sc])
                        for rid, ts, v, sc in state["scored"]}
        self._order = deque((float(ts), rid) for ts, rid in state["order"])
        self._newest = -np.inf if state["newest"] is None else float(state["newest"])
        self.unscored = int(state["unscored"])
        self.unmatched = int(state["unmatched"])
        self.matched = int(state["matched"])

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

    def state(self) -> dict[str, Any]:
        """The scores' and the guard's state between two polls (see :class:`WatchCheckpoint`)."""
        with self._lock:
            return {"scores": self.scores.state(), "guard": self.guard.state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Take up :meth:`state` (raises as :meth:`ServedScores.restore` and
        :meth:`RollbackGuard.restore <freshrec.ops.rollback.RollbackGuard.restore>`)."""
        with self._lock:
            self.scores.restore(state["scores"])
            self.guard.restore(state["guard"])

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


class WatchCheckpoint:
    """The checkpoint of ``freshrec watch``: ``watch.json`` in ``state_dir``, written
    atomically (temporary file, fsync, rename).

    It holds the read positions of the impressions and examples logs, the scored
    impressions still waiting for their examples, the rollback guard's state (the open
    window's examples, the good windows, the bad-window streak, the last good version, the
    windows and rollbacks so far) and the alerts firing with the count fired. A watcher that
    restores it and goes on reading measures the same windows and takes the same rollback
    decisions as one that never stopped. A checkpoint that cannot be read, or that was
    written for other logs or windows, raises :class:`~freshrec.errors.InputError` naming the
    file: the watcher does not start (remove the file to start afresh from the logs' start).

    Examples
    --------
    >>> import tempfile
    >>> from freshrec.config import config_from_dict
    >>> from freshrec.ops.alerts import Watcher
    >>> from freshrec.ops.collect import Collector
    >>> cfg = config_from_dict({"features": {"tables": {"t": {"dim": 4}},
    ...     "slots": {"a": {"table": "t"}}, "labels": ["click"]}})
    >>> d = tempfile.mkdtemp()
    >>> w = Watcher(cfg, Collector(cfg), sinks=[])
    >>> w.fired = 3
    >>> WatchCheckpoint(d).write(w)
    >>> again = Watcher(cfg, Collector(cfg), sinks=[])
    >>> WatchCheckpoint(d).restore(again), again.fired
    (True, 3)
    """

    VERSION = 1

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / "watch.json"

    def write(self, watcher: Watcher) -> None:
        """Write ``watcher``'s state (call it between two checks)."""
        serving = watcher.collector.serving
        state = {"v": self.VERSION, "written_at": time.time(),
                 "alerts": {"active": [asdict(a) for a in watcher.active.values()],
                            "fired": watcher.fired},
                 "serving": None if serving is None else serving.state()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # NaN (the AUC of a window of one class) is written as NaN, as Python's json does
        atomic_write_bytes(self.path, json.dumps(state).encode())

    def restore(self, watcher: Watcher) -> bool:
        """Give ``watcher`` the state of the checkpoint; ``False`` when there is none."""
        from freshrec.ops.alerts import Alert

        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise InputError(f"{self.path}: the watch checkpoint cannot be read: {e}") from e
        try:
            state = json.loads(text)
            if not isinstance(state, dict) or state.get("v") != self.VERSION:
                raise ValueError(f"expected a JSON object with \"v\": {self.VERSION}")
            active = [Alert(**a) for a in state["alerts"]["active"]]
            fired = int(state["alerts"]["fired"])
            serving = watcher.collector.serving
            if (state["serving"] is None) != (serving is None):
                raise ValueError("it was written with" + (
                    "out" if serving is not None else "") + " the join section's logs")
            if serving is not None:
                serving.restore(state["serving"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{self.path}: not a usable watch checkpoint ({type(e).__name__}: "
                             f"{e}); remove it to start afresh") from e
        watcher.active = {a.key: a for a in active}
        watcher.fired = fired
        log.info("watch: resumed from %s (%s)", self.path, "" if serving is None else
                 f"{serving.scores.matched} examples matched, {serving.scores.pending} "
                 f"impressions pending, {len(serving.guard.history)} windows")
        return True
