"""The joiner before its columnar output (git 3869910), kept as the same-run baseline of
``freshrec bench join`` (``file_join_rows_events_per_s``): one orjson row per example, whole
impressions stored as JSON in LMDB. Not part of the package; do not use it for anything
else.

The online joiner: impressions + delayed actions -> labelled examples, exactly once.


- Records are read from every partition of the input log from the joiner's own checkpointed
  offsets. Bad records (not JSON, schema errors, unknown types, larger than
  ``max_event_bytes``) go to the dead-letter log with the reason and are counted.
- Events are deduplicated by ``event_id`` (a duplicate has the same timestamp, so the key
  ``time bucket + event id`` finds it), impressions also by ``request_id``.
- An impression waits ("pending") until the watermark -- the largest event time seen minus
  ``allowed_lateness_s`` -- passes ``timestamp + window_s``; every action of a configured type
  on one of its candidates within the window sets that label to 1. Then each candidate becomes
  an example (negatives kept with probability ``negative_rate``, decided by a hash of
  ``(seed, request_id, item_id)`` so replays decide the same). Actions that come before their
  impression wait for it; actions after their impression was emitted are counted
  (``late_after_emit``) and, with ``emit_corrections``, emitted as a key-and-label-only
  example with ``correction=1``.
- Pending impressions live in LMDB; memory holds at most ``max_pending_in_memory`` of them as
  a write-back cache (the rest are "spilled" and read back when an action or their deadline
  comes). The LMDB write transaction stays open between checkpoints.
- Output (examples, dead letters, quarantined windows) is buffered and appended at each
  checkpoint, and then one LMDB commit stores the pending state, the input offsets and the
  output end offsets together. On restart, output written after the last commit is truncated
  and input is re-read from the committed offsets: a kill -9 loses and duplicates nothing.
- With validation, examples are held per window of impression time; a closed window whose
  counts, positive ratio or join rate are out of bounds is logged as an alert and written to
  the quarantine log instead, until :meth:`Joiner.release`.

Examples
--------
>>> import tempfile
>>> from freshrec.stream import FileLog, JoinerConfig, events
>>> d = tempfile.mkdtemp()
>>> src, out = FileLog(d + "/in"), FileLog(d + "/out")
>>> imp = {"type": "impression", "event_id": "e1", "request_id": "r1", "user_id": 5,
...        "timestamp": 100, "user": {"age": 3},
...        "candidates": [{"item_id": 7, "position": 0, "features": {"cat": 2}},
...                       {"item_id": 8, "position": 1, "features": {"cat": 4}}]}
>>> click = {"type": "action", "event_id": "e2", "request_id": "r1", "item_id": 8,
...          "action": "click", "timestamp": 104}
>>> later = {"type": "action", "event_id": "e3", "request_id": "rX", "item_id": 1,
...          "action": "click", "timestamp": 200}
>>> _ = src.append([events.encode(e) for e in (imp, click, later)])
>>> j = Joiner(src, out, d + "/state", JoinerConfig(window_s=10, allowed_lateness_s=0))
>>> [(e["item_id"], e["click"]) for e in j.step()]
[(7, 0.0), (8, 1.0)]
>>> j.close(); src.close(); out.close()
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import orjson

from freshrec.errors import InputError
from freshrec.stream import events as ev
from freshrec.stream.base import Log
from freshrec.stream.config import JoinerConfig

__all__ = ["Joiner", "LATENESS_BUCKETS_S"]

logger = logging.getLogger(__name__)

#: upper bounds (seconds) of the lateness histogram: how far behind the newest event time an
#: event arrived
LATENESS_BUCKETS_S = (0, 1, 5, 30, 60, 300, 3600, math.inf)
_BUCKET_S = 60
_STATE_KEY = b"state"


def _be(x: int) -> bytes:
    return max(x, 0).to_bytes(8, "big")


class _Pending:
    __slots__ = ("imp", "labels", "deadline_ms", "dirty", "persisted")

    def __init__(self, imp: dict[str, Any], labels: dict[str, list[str]], deadline_ms: int,
                 dirty: bool, persisted: bool) -> None:
        self.imp, self.labels, self.deadline_ms = imp, labels, deadline_ms
        self.dirty, self.persisted = dirty, persisted


class Joiner:
    """Join an event log into labelled examples (see the module docstring).

    Parameters
    ----------
    source
        Input log of impression and action events.
    output
        Log the examples are appended to (partitioned by request id).
    state_dir
        Directory of the LMDB state (pending impressions, dedupe keys, checkpoints).
    config
        :class:`~freshrec.stream.config.JoinerConfig`.
    side_logs
        Optional ``{"dead_letter": Log, "quarantine": Log}``; bad records and quarantined
        windows are only counted where a log is missing.
    """

    def __init__(self, source: Log, output: Log, state_dir: str | os.PathLike[str],
                 config: JoinerConfig | None = None,
                 side_logs: dict[str, Log] | None = None) -> None:
        self.config = config or JoinerConfig()
        self.source, self.output = source, output
        self.side_logs = dict(side_logs or {})
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(self.state_dir), map_size=self.config.map_size, max_dbs=8,
                              sync=True, metasync=True, lock=True)
        self._db = {n: self._env.open_db(n.encode()) for n in
                    ("pending", "due", "seen", "emitted", "emitted_t")}
        self._mem: OrderedDict[str, _Pending] = OrderedDict()
        self._due_heap: list[tuple[int, str]] = []
        self._out: dict[str, list[tuple[int, bytes]]] = {"output": [], "dead_letter": [],
                                                          "quarantine": []}
        self._restore()
        self._txn = self._env.begin(write=True)
        self._last_ckpt = time.monotonic()
        self._t0 = time.monotonic()
        self._step_out: list[dict[str, Any]] = []
        self._next_due = -math.inf  # recomputed at the first emission

    # -- state ---------------------------------------------------------------------------
    def _restore(self) -> None:
        with self._env.begin() as txn:
            blob = txn.get(_STATE_KEY)
        s: dict[str, Any] = orjson.loads(blob) if blob else {}
        self.offsets: dict[int, int] = {int(k): v for k, v in s.get("offsets", {}).items()}
        for p in range(self.source.partitions):
            self.offsets.setdefault(p, 0)
        self.max_ts: float = s.get("max_ts", -math.inf) if blob else -math.inf
        self.counters: dict[str, int] = s.get("counters", {})
        self.lateness: list[int] = s.get("lateness", [0] * len(LATENESS_BUCKETS_S))
        self._orphans: dict[str, list[dict[str, Any]]] = s.get("orphans", {})
        self._windows: dict[str, dict[str, Any]] = s.get("windows", {})
        self._released: list[int] = s.get("released", [])
        self._quarantined: list[int] = s.get("quarantined", [])
        # roll back side effects written after the last commit
        for name, log in self._logs().items():
            ends = s.get("ends", {}).get(name, {})
            for p in range(log.partitions):
                end = int(ends.get(str(p), 0))
                if log.end_offset(p) > end:
                    logger.info("joiner: rolling back uncommitted output log=%s partition=%d "
                                "from=%d", name, p, end)
                    log.truncate(p, end)
        self.counters.setdefault("restarts", 0)
        if blob:
            self.counters["restarts"] += 1

    def _logs(self) -> dict[str, Log]:
        logs = {"output": self.output}
        logs.update({k: v for k, v in self.side_logs.items() if k in ("dead_letter",
                                                                      "quarantine")})
        return logs

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    @property
    def watermark(self) -> float:
        """Largest event time seen minus the allowed lateness."""
        return self.max_ts - self.config.allowed_lateness_s

    def checkpoint(self) -> None:
        """Append buffered output, then commit state + input offsets + output ends at once."""
        ends: dict[str, dict[str, int]] = {}
        for name, log in self._logs().items():
            recs = self._out.get(name, [])
            by_part: dict[int, list[bytes]] = {}
            for p, payload in recs:
                by_part.setdefault(p, []).append(payload)
            for p, payloads in by_part.items():
                log.append(payloads, partition=p)
            ends[name] = {str(p): log.end_offset(p) for p in range(log.partitions)}
            if hasattr(log, "flush"):
                log.flush()
            recs.clear()
        for rid, pend in self._mem.items():
            if pend.dirty:
                self._persist(rid, pend)
        state = {"offsets": self.offsets, "max_ts": self.max_ts if self.max_ts > -math.inf
                 else None, "counters": self.counters, "lateness": self.lateness,
                 "orphans": self._orphans, "windows": self._windows, "ends": ends,
                 "released": self._released, "quarantined": self._quarantined}
        if state["max_ts"] is None:
            state.pop("max_ts")
        self._txn.put(_STATE_KEY, orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS))
        self._txn.commit()
        self._txn = self._env.begin(write=True)
        self._last_ckpt = time.monotonic()

    def _persist(self, rid: str, pend: _Pending) -> None:
        key = rid.encode()
        self._txn.put(key, orjson.dumps({"imp": pend.imp, "lab": pend.labels,
                                         "d": pend.deadline_ms}), db=self._db["pending"])
        if not pend.persisted:
            self._txn.put(_be(pend.deadline_ms) + key, b"", db=self._db["due"])
        pend.dirty, pend.persisted = False, True

    def _cache(self, rid: str, pend: _Pending) -> None:
        self._next_due = min(self._next_due, pend.deadline_ms)
        self._mem[rid] = pend
        bisect.insort(self._due_heap, (pend.deadline_ms, rid))
        while len(self._mem) > self.config.max_pending_in_memory:
            old_rid, old = self._mem.popitem(last=False)
            if old.dirty or not old.persisted:
                self._persist(old_rid, old)
            self._count("spilled")

    def _get_pending(self, rid: str) -> _Pending | None:
        pend = self._mem.get(rid)
        if pend is not None:
            return pend
        raw = self._txn.get(rid.encode(), db=self._db["pending"])
        if raw is None:
            return None
        d = orjson.loads(raw)
        pend = _Pending(d["imp"], d["lab"], d["d"], dirty=False, persisted=True)
        self._count("unspilled")
        self._cache(rid, pend)
        return pend

    # -- processing ----------------------------------------------------------------------
    def step(self, max_records: int = 5000, timeout_s: float = 0.0) -> list[dict[str, Any]]:
        """Read up to ``max_records`` per partition, join, emit what is due; returns the
        examples emitted (they reach the output log at the next checkpoint, which happens
        here once ``checkpoint_every_s`` has passed)."""
        got_any = False
        for p in range(self.source.partitions):
            recs = self.source.read(p, self.offsets[p], max_records, 0.0)
            if recs:
                got_any = True
                for r in recs:
                    self._process(r.value, p, r.offset)
                self.offsets[p] = recs[-1].offset + 1
        if not got_any and timeout_s > 0:
            time.sleep(min(timeout_s, 0.01))
        if time.monotonic() - self._last_ckpt >= self.config.checkpoint_every_s:
            self.checkpoint()
        emitted, self._step_out = self._step_out, []
        return emitted

    def run(self, *, idle_timeout_s: float = 1.0, max_events: int | None = None,
            flush_at_end: bool = False) -> dict[str, Any]:
        """Step until the input has been idle for ``idle_timeout_s`` (or ``max_events``
        were read); with ``flush_at_end`` emit every pending impression (end of stream).
        Returns :meth:`metrics`."""
        idle_since = time.monotonic()
        start = self.counters.get("events_in", 0)
        while True:
            before = self.counters.get("events_in", 0)
            self.step(timeout_s=0.05)
            now = time.monotonic()
            if self.counters.get("events_in", 0) != before:
                idle_since = now
            elif now - idle_since >= idle_timeout_s:
                break
            if max_events is not None and self.counters.get("events_in", 0) - start >= max_events:
                break
        if flush_at_end:
            self.flush()
        self.checkpoint()
        return self.metrics()

    def flush(self) -> list[dict[str, Any]]:
        """End of stream: emit every pending impression and close every window."""
        out = self._step_out + self._emit_due(math.inf)
        self._step_out = []
        self._close_windows(math.inf)
        self.checkpoint()
        return out

    def _dead(self, payload: bytes, partition: int, offset: int, reason: str) -> None:
        self._count("dead_letters")
        if "dead_letter" in self.side_logs:
            rec = orjson.dumps({"partition": partition, "offset": offset, "reason": reason,
                                "payload": payload[:4096].decode("utf-8", "replace")})
            self._out["dead_letter"].append((0, rec))

    def _process(self, payload: bytes, partition: int, offset: int) -> None:
        self._count("events_in")
        if len(payload) > self.config.max_event_bytes:
            self._dead(payload, partition, offset,
                       f"event of {len(payload)} bytes > max_event_bytes "
                       f"{self.config.max_event_bytes}")
            return
        try:
            e = ev.decode(payload)
            kind = ev.validate_event(e)
        except InputError as err:
            self._dead(payload, partition, offset, str(err))
            return
        ts = float(e["timestamp"])
        if self.max_ts > -math.inf:
            late = self.max_ts - ts
            k = bisect.bisect_left(LATENESS_BUCKETS_S, late)
            self.lateness[k] += 1
        seen_key = _be(int(ts) // _BUCKET_S) + str(e["event_id"]).encode()
        if not self._txn.put(seen_key, b"", db=self._db["seen"], overwrite=False):
            self._count("duplicates")
            return
        if ts > self.max_ts:
            self.max_ts = ts
            if self.watermark * 1000 >= self._next_due:
                self._step_out += self._emit_due(self.watermark)
        if kind == "impression":
            self._impression(e, ts)
        else:
            self._action(e, ts)

    def _window(self, ts: float) -> dict[str, Any] | None:
        v = self.config.validation
        if v is None:
            return None
        w = str(int(ts) // v.window_s)
        return self._windows.setdefault(w, {"examples": 0, "positives": 0, "actions": 0,
                                            "joined": 0, "held": []})

    def _impression(self, e: dict[str, Any], ts: float) -> None:
        rid = str(e["request_id"])
        self._count("impressions")
        if (self._get_pending(rid) is not None
                or self._txn.get(rid.encode(), db=self._db["emitted"]) is not None):
            self._count("duplicates")
            return
        if ts + self.config.window_s < self.watermark:
            self._count("late_impressions")
        pend = _Pending(e, {}, int(round((ts + self.config.window_s) * 1000)), dirty=True,
                        persisted=False)
        self._cache(rid, pend)
        for a in self._orphans.pop(rid, []):
            self._label(pend, a, float(a["timestamp"]))

    def _action(self, e: dict[str, Any], ts: float) -> None:
        self._count("actions")
        if e["action"] not in self.config.actions:
            self._count("other_actions")
            return
        win = self._window(ts)
        if win is not None:
            win["actions"] += 1
        rid = str(e["request_id"])
        pend = self._get_pending(rid)
        if pend is not None:
            self._label(pend, e, ts)
            return
        if self._txn.get(rid.encode(), db=self._db["emitted"]) is not None:
            self._count("late_after_emit")
            if self.config.emit_corrections:
                ex = {"request_id": e["request_id"], "item_id": e["item_id"],
                      "event_time": int(ts), **{a: float(a == e["action"])
                                                for a in self.config.actions},
                      "sample_rate": 1.0, "correction": 1}
                self._emit(ex, rid)
            return
        self._orphans.setdefault(rid, []).append(e)

    def _label(self, pend: _Pending, e: dict[str, Any], ts: float) -> None:
        imp_ts = float(pend.imp["timestamp"])
        if ts - imp_ts > self.config.window_s:
            self._count("outside_window")
            return
        item = str(e["item_id"])
        if not any(str(c["item_id"]) == item for c in pend.imp["candidates"]):
            self._count("unknown_item")
            return
        acts = pend.labels.setdefault(item, [])
        if e["action"] not in acts:
            acts.append(e["action"])
        pend.dirty = True
        self._count("joined")
        win = self._window(ts)
        if win is not None:
            win["joined"] += 1

    def _keep(self, rid: str, item: Any) -> bool:
        rate = self.config.negative_rate
        if rate >= 1.0:
            return True
        h = zlib.crc32(f"{self.config.seed}:{rid}:{item}".encode())
        return h < rate * 4294967296.0

    def _due(self, watermark: float) -> list[tuple[int, str]]:
        lim = math.inf if watermark == math.inf else int(math.floor(watermark * 1000))
        due: dict[str, int] = {}
        k = 0
        while k < len(self._due_heap) and self._due_heap[k][0] <= lim:
            d, rid = self._due_heap[k]
            if rid in self._mem and self._mem[rid].deadline_ms == d:
                due[rid] = d
            k += 1
        del self._due_heap[:k]
        cur = self._txn.cursor(db=self._db["due"])
        if cur.first():
            for key in cur.iternext(values=False):
                d = int.from_bytes(key[:8], "big")
                if d > lim:
                    break
                due[key[8:].decode()] = d
        return sorted((d, rid) for rid, d in due.items())

    def _refresh_next_due(self) -> None:
        nxt = self._due_heap[0][0] if self._due_heap else math.inf
        cur = self._txn.cursor(db=self._db["due"])
        if cur.first():
            nxt = min(nxt, int.from_bytes(cur.key()[:8], "big"))
        self._next_due = nxt

    def _emit_due(self, watermark: float) -> list[dict[str, Any]]:
        if watermark == -math.inf:
            return []
        out: list[dict[str, Any]] = []
        for d, rid in self._due(watermark):
            pend = self._mem.pop(rid, None)
            if pend is None:
                raw = self._txn.get(rid.encode(), db=self._db["pending"])
                if raw is None:
                    continue
                dd = orjson.loads(raw)
                pend = _Pending(dd["imp"], dd["lab"], dd["d"], dirty=False, persisted=True)
            if pend.persisted:
                self._txn.delete(rid.encode(), db=self._db["pending"])
                self._txn.delete(_be(d) + rid.encode(), db=self._db["due"])
            imp_ts = float(pend.imp["timestamp"])
            self._txn.put(rid.encode(), _be(int(imp_ts)), db=self._db["emitted"])
            self._txn.put(_be(int(imp_ts) // _BUCKET_S) + rid.encode(), b"",
                          db=self._db["emitted_t"])
            for c in pend.imp["candidates"]:
                acts = pend.labels.get(str(c["item_id"]), ())
                labels = {a: float(a in acts) for a in self.config.actions}
                if acts:
                    rate = 1.0
                    self._count("positives")
                elif self._keep(rid, c["item_id"]):
                    rate = self.config.negative_rate
                    self._count("negatives")
                else:
                    self._count("negatives_dropped")
                    continue
                ex = ev.flatten_example(pend.imp, c, labels, rate)
                out.append(ex)
                self._emit(ex, rid)
        self._refresh_next_due()
        self._expire(watermark)
        self._close_windows(watermark)
        return out

    def _emit(self, ex: dict[str, Any], rid: str) -> None:
        self._count("examples_out")
        win = self._window(float(ex["event_time"]))
        if win is None:
            self._out["output"].append(
                (ev.partition_for(rid, self.output.partitions), orjson.dumps(ex)))
            return
        win["examples"] += 1
        if any(ex.get(a) for a in self.config.actions):
            win["positives"] += 1
        win["held"].append(ex)

    def _expire(self, watermark: float) -> None:
        """Forget dedupe keys and emitted ids older than the horizon; drop orphans whose
        impression can no longer come."""
        if watermark == math.inf:
            return
        for rid in [r for r, acts in self._orphans.items()
                    if max(float(a["timestamp"]) for a in acts) < watermark]:
            self._count("unjoined_actions", len(self._orphans.pop(rid)))
        horizon = int(watermark - self.config.dedupe_horizon_s) // _BUCKET_S
        if horizon <= 0:
            return
        for name in ("seen", "emitted_t"):
            cur = self._txn.cursor(db=self._db[name])
            while cur.first() and int.from_bytes(cur.key()[:8], "big") < horizon:
                if name == "emitted_t":
                    self._txn.delete(cur.key()[8:], db=self._db["emitted"])
                cur.delete()

    def _close_windows(self, watermark: float) -> None:
        v = self.config.validation
        if v is None:
            return
        for w in sorted(self._windows, key=int):
            if (int(w) + 1) * v.window_s + self.config.window_s > watermark:
                break
            st = self._windows.pop(w)
            problems = []
            n, pos = st["examples"], st["positives"]
            ratio = pos / n if n else 0.0
            join_rate = st["joined"] / st["actions"] if st["actions"] else 1.0
            if n < v.min_examples:
                problems.append(f"examples {n} < {v.min_examples}")
            if v.max_examples is not None and n > v.max_examples:
                problems.append(f"examples {n} > {v.max_examples}")
            if n and not v.min_positive_ratio <= ratio <= v.max_positive_ratio:
                problems.append(f"positive ratio {ratio:.4f} outside "
                                f"[{v.min_positive_ratio}, {v.max_positive_ratio}]")
            if join_rate < v.min_join_rate:
                problems.append(f"join rate {join_rate:.4f} < {v.min_join_rate}")
            held = st.pop("held")
            if problems and int(w) not in self._released:
                logger.warning("joiner: ALERT window=%s start=%d quarantined: %s", w,
                               int(w) * v.window_s, "; ".join(problems))
                self._quarantined.append(int(w))
                self._count("quarantined_windows")
                self._count("quarantined_examples", len(held))
                for ex in held:
                    self._out["quarantine"].append(
                        (0, orjson.dumps({"window": int(w), "example": ex})))
            else:
                for ex in held:
                    self._out["output"].append(
                        (ev.partition_for(ex["request_id"], self.output.partitions),
                         orjson.dumps(ex)))

    def release(self, window: int) -> int:
        """Let a quarantined window's examples through to the output; returns how many."""
        q = self.side_logs.get("quarantine")
        if q is None or window in self._released:
            return 0
        n = 0
        for rec in self._iter_log(q):
            d = orjson.loads(rec)
            if d["window"] == window:
                ex = d["example"]
                self._out["output"].append(
                    (ev.partition_for(ex["request_id"], self.output.partitions),
                     orjson.dumps(ex)))
                n += 1
        self._released.append(window)
        self._count("released_examples", n)
        self.checkpoint()
        return n

    @staticmethod
    def _iter_log(log: Log) -> Iterator[bytes]:
        for p in range(log.partitions):
            off = 0
            while True:
                recs = log.read(p, off, 10_000)
                if not recs:
                    break
                for r in recs:
                    yield r.value
                off = recs[-1].offset + 1

    # -- metrics -------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Counters and gauges: events in/out and their rates per wall second, join rate,
        pending (in memory / in LMDB), spill size in bytes, watermark and its lag."""
        c = dict(self.counters)
        dt = max(time.monotonic() - self._t0, 1e-9)
        stat = self._txn.stat(self._db["pending"])
        c.update({
            "events_in_per_s": c.get("events_in", 0) / dt,
            "examples_out_per_s": c.get("examples_out", 0) / dt,
            "join_rate": (c.get("joined", 0) / max(c.get("actions", 0)
                                                    - c.get("other_actions", 0), 1)),
            "pending_in_memory": len(self._mem),
            "pending_on_disk": stat["entries"],
            "spill_bytes": stat["psize"] * (stat["leaf_pages"] + stat["branch_pages"]
                                            + stat["overflow_pages"]),
            "watermark": self.watermark if self.max_ts > -math.inf else None,
            "watermark_lag_s": float(self.config.allowed_lateness_s),
            "lateness_histogram": dict(zip([str(b) for b in LATENESS_BUCKETS_S],
                                           self.lateness, strict=True)),
            "orphan_actions": sum(len(v) for v in self._orphans.values()),
            "quarantined": list(self._quarantined),
        })
        return c

    def close(self) -> None:
        """Checkpoint and close the state store."""
        if self._txn is not None:
            self.checkpoint()
            self._txn.abort()
            self._txn = None  # type: ignore[assignment]
        self._env.close()

    def __repr__(self) -> str:
        return (f"Joiner(pending={len(self._mem)}, watermark={self.watermark}, "
                f"events_in={self.counters.get('events_in', 0)})")
