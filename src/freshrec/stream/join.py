"""The online joiner: impressions + delayed actions -> labelled examples, exactly once.

How it works (Monolith's online joiner, with SmartNews' stream validation):

- Records are read from every partition of the input log from the joiner's own checkpointed
  offsets. Bad records (not JSON, schema errors, unknown types, larger than
  ``max_event_bytes``) go to the dead-letter log with the reason and are counted.
- Events are deduplicated by ``event_id`` (a duplicate has the same timestamp, so the key
  ``time bucket + event id`` finds it), impressions also by ``request_id``. Ids longer than
  :data:`MAX_KEY_BYTES` are keyed by their BLAKE2b hash (LMDB keys are at most 511 bytes).
- Watermarks are per partition: partition ``p``'s watermark is the largest event time read
  from ``p`` minus ``allowed_lateness_s``; the joiner's watermark is the minimum over the
  partitions (it never moves back; with ``idle_partition_s`` set, a partition with nothing to
  read for that many wall seconds stops holding it back, as Flink's idle sources).
- An impression waits ("pending") until the watermark passes its deadline ``timestamp +
  window_s``. An action of a configured type on one of its candidates labels it when the
  action's time is within ``[timestamp - allowed_lateness_s, timestamp + window_s]`` and the
  action was read before *its own partition's* watermark passed the deadline. Both conditions
  depend only on the input (each partition's records in order), never on how reads of
  different partitions interleave, so the joined output is a function of the input alone:
  a rerun, or a run killed and restarted any number of times, writes the same examples in the
  same order (impressions are emitted in ``(deadline, request id)`` order). Then each
  candidate becomes an example (negatives kept with probability ``negative_rate``, decided by
  a hash of ``(seed, request_id, item_id)`` so replays decide the same). Actions that come
  before their impression wait for it ("orphans"); actions read after their partition's
  watermark passed the deadline are counted (``late_actions`` while the impression is
  pending, ``late_after_emit`` after) and, with ``emit_corrections``, an action after the
  emission is emitted as a key-and-label-only example with ``correction=1``. An impression
  read after its own partition's watermark passed its deadline could miss its labels: it is
  dead-lettered as late ("samples may be missing, never wrong").
- Poison records cannot stop the joiner or corrupt labels: a timestamp must be a number in
  ``[0, 1e11)`` seconds, an impression has at most ``max_candidates`` candidates; a record
  dated more than ``max_future_skew_s`` ahead of its partition's newest event time (the wall
  clock for a partition's first record) is held back, and dead-lettered unless
  ``jump_confirm_records`` consecutive records of the partition confirm the jump (a real gap
  in the stream), so one far-future timestamp never moves the watermark. Any other error
  raised while handling one record dead-letters that record (``internal_errors``).
- A pending impression is held column-wise (:class:`~freshrec.stream.events.CompactImpression`:
  no dict per candidate), as a view of the columns of the records decoded with it; one dated
  more than ``window_s`` ahead of its partition's newest event time (it will be pending long
  after them) holds a copy of its own columns instead, so it never keeps theirs alive.
  Its durable state in LMDB is small: where the impression is in the
  input log (partition, offset), its labels so far and its deadline; the impression itself is
  read back from the input log when needed (after a restart, or when it was evicted from
  memory: at most ``max_pending_in_memory`` pending impressions are held in memory). The input
  log must therefore keep records until their impression is emitted (``window_s +
  allowed_lateness_s`` of event time at least). The LMDB write transaction stays open between
  checkpoints.
- Output (examples, dead letters, quarantined windows) is buffered and appended at each
  checkpoint -- examples as Arrow record batches, one record per output partition and
  checkpoint (format: :mod:`freshrec.stream.events`) -- and then one LMDB commit stores the
  pending state, the input offsets and the output end offsets together. On restart, output
  written after the last commit is truncated and input is re-read from the committed offsets:
  a kill -9 loses and duplicates nothing.
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
>>> j.step(), j.checkpoint()
(2, None)
>>> rb, _ = events.decode_examples([r.value for r in out.read(0, 0)])
>>> rb.select(["item_id", "click"]).to_pylist()
[{'item_id': 7, 'click': 0.0}, {'item_id': 8, 'click': 1.0}]
>>> j.close(); src.close(); out.close()
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import heapq
import logging
import math
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import numpy as np
import orjson
import pyarrow as pa

from freshrec.errors import ConfigError, InputError, brief
from freshrec.stream import events as ev
from freshrec.stream.base import Log, mark_committed
from freshrec.stream.config import JoinerConfig
from freshrec.stream.dedupe import KeyIndex, bucket_key
from freshrec.stream.pending_batches import PendingBatches

__all__ = ["Joiner", "LATENESS_BUCKETS_S", "MAX_KEY_BYTES", "MAX_TIMESTAMP_S"]

logger = logging.getLogger(__name__)

#: upper bounds (seconds) of the lateness histogram: how far behind the newest event time an
#: event arrived
LATENESS_BUCKETS_S = (0, 1, 5, 30, 60, 300, 3600, math.inf)
_BUCKET_S = 60
_STATE_KEY = b"state"
_STATE_VERSION = 4  # 3: per-partition watermarks, held far-future records; 4: batches of
# pending impressions (a version-3 state has none and is read as it is)
#: ids (request, event) longer than this are keyed by their hash in the state store
MAX_KEY_BYTES = 200
#: event times must be in [0, MAX_TIMESTAMP_S) seconds (year 5138)
MAX_TIMESTAMP_S = 1e11
_READ_AHEAD = 256
_SOURCE_CACHE_MAX = 4096
_DECODE_CHUNK = 64  # records decoded at once; a due checkpoint is checked between chunks
_INT64_BOUND = 1 << 63
_NO_LABELS: dict[str, list[str]] = {}  # the labels of every unlabelled impression (read only)
_NO_CANDIDATE_LABELS: dict[int, list[str]] = {}  # the same, emitted (read only)


#: a str id this short is its own key (at most 4 bytes per character in UTF-8)
_SHORT_ID = MAX_KEY_BYTES // 4


def _key(s: str) -> str:
    """``s``, or its hash when it is too long to be (part of) an LMDB key or empty (LMDB
    refuses empty keys).

    >>> _key("r1"), len(_key("r" * 600)), len(_key(""))
    ('r1', 41, 41)
    """
    if s and (len(s) <= _SHORT_ID or len(s.encode()) <= MAX_KEY_BYTES):
        return s
    return "\x00" + hashlib.blake2b(s.encode(), digest_size=20).hexdigest()


def _pending_value(src: Sequence[int], labels: dict[str, list[str]], deadline_ms: int
                   ) -> bytes:
    """The LMDB value of a pending impression that has an item of its own."""
    return orjson.dumps({"src": src, "lab": labels, "d": deadline_ms})


_F = TypeVar("_F", bound=Callable[..., Any])


def _state_limit(fn: _F) -> _F:
    """``fn`` (a method of :class:`Joiner`) with LMDB's "map full" turned into a
    :class:`ConfigError` that names the setting to raise; the state is as of the last
    checkpoint, from which a joiner with a larger map resumes."""
    @functools.wraps(fn)
    def wrapper(self: Joiner, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except lmdb.MapFullError as e:
            raise ConfigError(
                f"joiner state {self.state_dir}: its LMDB map of {self.config.map_size} bytes "
                f"is full; raise join.map_size (e.g. --set join.map_size="
                f"{2 * self.config.map_size}): a joiner restarted with it resumes from the "
                f"last checkpoint") from e
    return wrapper  # type: ignore[return-value]


class _Pending:
    __slots__ = ("imp", "labels", "deadline_ms", "dirty", "persisted", "src", "index",
                 "found", "batch", "slot")

    def __init__(self, imp: ev.CompactImpression, labels: dict[str, list[str]],
                 deadline_ms: int, dirty: bool, persisted: bool, src: tuple[int, int]) -> None:
        self.imp, self.labels, self.deadline_ms = imp, labels, deadline_ms
        self.dirty, self.persisted, self.src = dirty, persisted, src
        # durable in a checkpoint's batch of pending impressions (persisted: in an LMDB item
        # of its own; at most one of the two)
        self.batch, self.slot = -1, 0
        self.index: dict[str, list[int]] | None = None  # str(item id) -> candidate indices
        # positions of the labelled items (made on first use: most impressions get no label,
        # and every container a pending impression holds is work for the garbage collector)
        self.found: dict[str, list[int]] | None = None

    def find(self, item: Any) -> list[int] | None:
        """Candidate indices whose item id reads as ``str(item)`` (None: not a candidate)."""
        key = str(item)
        if self.found is None:
            self.found = {}
        got = self.found.get(key)
        if got is not None:
            return got
        items = self.imp.items
        if type(item) is self.imp.item_type:  # one C-level scan per occurrence
            js: list[int] = []
            if isinstance(items, np.ndarray):
                if isinstance(item, int) and -_INT64_BOUND <= item < _INT64_BOUND:
                    js = np.flatnonzero(items == item).tolist()
            else:
                try:
                    while True:
                        js.append(items.index(item, js[-1] + 1 if js else 0))
                except ValueError:
                    pass
        else:  # ids of another type ("7" and 7 are the same item): index them by str
            if self.index is None:
                index: dict[str, list[int]] = {}
                for j, it in enumerate(items):
                    index.setdefault(str(it), []).append(j)
                self.index = index
            js = self.index.get(key, [])
        if not js:
            return None
        self.found[key] = js
        return js


class Joiner:
    """Join an event log into labelled examples (see the module docstring).

    Parameters
    ----------
    source
        Input log of impression and action events.
    output
        Log the examples are appended to. With as many partitions as the source, an
        example goes to the partition its impression was read from (so each source
        partition's examples stay in order in one output partition); otherwise to the
        partition of its request id. Dead letters and quarantined examples are routed the
        same way.
    state_dir
        Directory of the LMDB state (pending impressions, dedupe keys, checkpoints).
    config
        :class:`~freshrec.stream.config.JoinerConfig`.
    side_logs
        Optional ``{"dead_letter": Log, "quarantine": Log}``; bad records and quarantined
        windows are only counted where a log is missing.
    partitions
        The source partitions this joiner reads (None: all). Joiners over disjoint sets of
        partitions run side by side, each with its own state directory (a *worker*); every
        log they write must then have as many partitions as the source, since each writes
        only its own partitions. A state directory stays with its set of partitions.
    """

    def __init__(self, source: Log, output: Log, state_dir: str | os.PathLike[str],
                 config: JoinerConfig | None = None,
                 side_logs: dict[str, Log] | None = None,
                 partitions: Sequence[int] | None = None) -> None:
        self.config = config or JoinerConfig()
        self._lateness_ms = self.config.allowed_lateness_s * 1000
        # seconds of dedupe keys kept behind the watermark (see _horizon)
        self._keep_s = max(self.config.dedupe_horizon_s,
                           self.config.window_s + self.config.allowed_lateness_s + _BUCKET_S)
        self._expiry_from_ms = -math.inf  # see _bound_expiry
        self._prefix_bucket, self._prefix = -1, bucket_key(-1, b"")  # see _accept
        self.source, self.output = source, output
        self.side_logs = dict(side_logs or {})
        n = source.partitions
        owned = tuple(range(n)) if partitions is None else tuple(sorted(set(partitions)))
        if not owned or not all(isinstance(p, int) and 0 <= p < n for p in owned):
            raise InputError(f"Joiner: partitions must be a non-empty set of ints in [0, {n}) "
                             f"(the source's partitions), got {partitions!r}")
        #: the source partitions this joiner reads
        self.owned: tuple[int, ...] = owned
        if len(owned) < n:
            for name, log in self._logs().items():
                if log.partitions != n:
                    raise InputError(
                        f"Joiner over partitions {list(owned)} of {n}: the {name} log must "
                        f"have {n} partitions (one per source partition, each written by "
                        f"the joiner that reads it), got {log.partitions}")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(self.state_dir), map_size=self.config.map_size, max_dbs=8,
                              sync=True, metasync=True, lock=True)
        self._db = {n: self._env.open_db(n.encode()) for n in
                    ("pending", "due", "seen", "emitted", "emitted_t", "pbatch", "pgone")}
        self._batches = PendingBatches(self._db["pbatch"], self._db["pgone"])
        self._mem: OrderedDict[str, _Pending] = OrderedDict()
        self._dirty: dict[str, _Pending] = {}  # pending impressions changed since the commit
        # deadlines (ms) of the pending impressions, in memory or spilled: a heap of the
        # distinct deadlines and the request ids of each (ints compare faster than tuples,
        # and many impressions share a millisecond)
        self._due_heap: list[int] = []
        self._due_rids: dict[int, list[str]] = {}
        cap = self.config.max_dedupe_keys_in_memory
        self._seen = KeyIndex(self._env, self._db["seen"], None, max_in_memory=cap)
        self._emitted = KeyIndex(self._env, self._db["emitted"], self._db["emitted_t"],
                                 max_in_memory=cap)
        self._out: dict[str, list[tuple[int, bytes]]] = {"dead_letter": [], "quarantine": []}
        # examples per output partition, in emission order: EmittedImpression or a row dict
        self._out_examples: dict[int, list[ev.EmittedImpression | dict[str, Any]]] = {}
        self._source_cache: dict[tuple[int, int], bytes] = {}
        self._marked: dict[int, int] = {}  # output partition -> committed end last marked
        ev.decode_events([])  # loads the compiled kernel now rather than with the first read
        self._restore()
        self._txn = self._env.begin(write=True)
        self._last_ckpt = time.monotonic()
        self._t0 = time.monotonic()
        self._step_examples = 0
        self._next_due = -math.inf  # recomputed at the first emission
        self._idle_since: dict[int, float] = {}  # partition -> wall time it was caught up
        self._busy = False  # a step or flush is under way (interrupted if close sees it)

    # -- state ---------------------------------------------------------------------------
    def _restore(self) -> None:
        with self._env.begin(write=True) as txn:
            blob = txn.get(_STATE_KEY)
            s: dict[str, Any] = orjson.loads(blob) if blob else {}
            # the oldest time bucket of dedupe keys kept (see _horizon), the same for both
            horizon = s.get("expired_bucket", 0)
            self._seen.load(txn, horizon)
            self._emitted.load(txn, horizon)
            self._bound_expiry()
            # the members of the checkpoints' batches become items of their own, as
            # spilled impressions
            for rid, p, o, d in self._batches.restore(txn):
                txn.put(rid.encode(), _pending_value((p, o), {}, d), db=self._db["pending"],
                        overwrite=False)
            # spilled impressions are found by their deadline in the heap (state version 3
            # also kept a "due" index in LMDB: the heap replaces it)
            spilled = 0
            for key, raw in txn.cursor(db=self._db["pending"]):
                self._add_due(orjson.loads(raw)["d"], key.decode())
                spilled += 1
            #: pending impressions in LMDB and not in memory (none: lookups skip LMDB)
            self._on_disk_only = spilled
            txn.drop(self._db["due"], delete=False)
        if blob and s.get("version", 1) == 2 and s.get("max_ts") is not None:
            # one watermark for all partitions: it becomes every partition's
            s["partition_max_ts"] = {p: s["max_ts"] for p in range(self.source.partitions)}
            s["watermark_ms"] = (math.floor(s["max_ts"] * 1000)
                                 - self.config.allowed_lateness_s * 1000)
            for w in s.get("windows", {}).values():  # held rows gain their partition
                w["held"] = [[ev.partition_for(str(r["request_id"]), self.source.partitions),
                              r] for r in w.get("held", [])]
        elif blob and s.get("version", 1) not in (3, _STATE_VERSION):
            raise InputError(f"joiner state {self.state_dir}: state version "
                             f"{s.get('version', 1)} is not one this joiner reads (3, "
                             f"{_STATE_VERSION}); start from a "
                             f"new state directory")
        if blob and s.get("owned", list(self.owned)) != list(self.owned):
            raise InputError(f"joiner state {self.state_dir} belongs to source partitions "
                             f"{s['owned']}, not {list(self.owned)}; give each set of "
                             f"partitions its own state directory")
        self.offsets: dict[int, int] = {int(k): v for k, v in s.get("offsets", {}).items()}
        for p in self.owned:
            self.offsets.setdefault(p, 0)
        #: per partition: the largest accepted event time read from it
        self.partition_max_ts: dict[int, float] = {
            int(k): v for k, v in s.get("partition_max_ts", {}).items()}
        #: the joiner's watermark in ms (minimum over the partitions; never moves back)
        self._wm_ms: float = s.get("watermark_ms", -math.inf)
        # far-future records held back per partition: (offset, payload, decoded)
        self._held: dict[int, list[tuple[int, bytes, Any]]] = {}
        for k, offs in s.get("held", {}).items():
            self._held[int(k)] = [(o, self._source_record(int(k), o) or b"", None)
                                  for o in offs]
        self.counters: dict[str, int] = s.get("counters", {})
        self.lateness: list[int] = s.get("lateness", [0] * len(LATENESS_BUCKETS_S))
        self._orphans: dict[str, list[dict[str, Any]]] = s.get("orphans", {})
        self._windows: dict[str, dict[str, Any]] = s.get("windows", {})
        self._released: list[int] = s.get("released", [])
        self._quarantined: list[int] = s.get("quarantined", [])
        # roll back side effects written after the last commit
        for name, log in self._logs().items():
            ends = s.get("ends", {}).get(name, {})
            for p in self._written(log):
                end = int(ends.get(str(p), 0))
                if log.end_offset(p) > end:
                    logger.info("joiner: rolling back uncommitted output log=%s partition=%d "
                                "from=%d", name, p, end)
                    log.truncate(p, end)
        self.counters.setdefault("restarts", 0)
        if blob:
            self.counters["restarts"] += 1
            self._mark_output(s.get("ends", {}).get("output", {}))

    def _mark_output(self, ends: dict[str, int]) -> None:
        """Tell readers where the committed output ends (what a restart never rolls back);
        a partition whose end did not move since its last mark is not written again."""
        for p in self._written(self.output):
            end = ends.get(str(p))
            if end is not None and self._marked.get(p) != int(end):
                mark_committed(self.output, p, int(end))
                self._marked[p] = int(end)

    def _logs(self) -> dict[str, Log]:
        logs = {"output": self.output}
        logs.update({k: v for k, v in self.side_logs.items() if k in ("dead_letter",
                                                                      "quarantine")})
        return logs

    def _written(self, log: Log) -> Sequence[int]:
        """The partitions of ``log`` this joiner writes (and rolls back on restart)."""
        return self.owned if log.partitions == self.source.partitions else range(log.partitions)

    def _route(self, log: Log, partition: int, request_id: Any) -> int:
        """Partition of ``log`` for a record derived from source ``partition``."""
        if log.partitions == self.source.partitions:
            return partition
        return ev.partition_for(str(request_id), log.partitions) if log.partitions > 1 else 0

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    @property
    def watermark(self) -> float:
        """The joiner's watermark in seconds: the minimum over the partitions (idle ones
        excepted) of the largest event time read from each, minus the allowed lateness
        (``-inf`` until every partition has been read or found idle)."""
        return self._wm_ms / 1000.0

    def _partition_wm_ms(self, p: int) -> float:
        ts = self.partition_max_ts.get(p)
        if ts is None:
            return -math.inf
        return math.floor(ts * 1000) - self._lateness_ms

    def _advance_watermark(self, emit: bool = True) -> None:
        """Recompute the joiner's watermark from the partitions' and (``emit``) emit what is
        due."""
        now = time.monotonic()
        idle = self.config.idle_partition_s
        marks = [self._partition_wm_ms(p) for p in self.owned
                 if idle is None or not (p in self._idle_since
                                         and now - self._idle_since[p] >= idle)]
        low = min(marks, default=-math.inf)
        if low > self._wm_ms:
            self._wm_ms = low
        if emit and self._wm_ms >= self._next_due:
            self._emit_due(self._wm_ms)

    def _horizon(self, wm_ms: float) -> int:
        """The oldest time bucket of dedupe keys kept at watermark ``wm_ms``: a duplicate
        older than the horizon is a late impression (dead-lettered), so the horizon is never
        shorter than the label window."""
        return int(wm_ms / 1000.0 - self._keep_s) // _BUCKET_S

    def _bound_expiry(self) -> None:
        """Set :attr:`_expiry_from_ms`, a watermark below which :meth:`_horizon` does not
        pass the keys' current horizon (a test per impression cheaper than the call; 1 ms
        below the exact bound, which float rounding moves by far less)."""
        self._expiry_from_ms = ((self._seen.horizon + 1) * _BUCKET_S + self._keep_s) * 1000 - 1

    def _example_records(self, items: list[ev.EmittedImpression | dict[str, Any]]
                         ) -> list[bytes]:
        """Encode buffered examples: runs of emitted impressions column-wise, runs of rows
        (validated windows, corrections) with ``examples_to_record_batch``; one record per run, split at
        :data:`~freshrec.stream.events.MAX_ROWS_PER_RECORD` examples."""
        recs: list[bytes] = []
        run: list[Any] = []
        rows_in_run = 0

        def flush() -> None:
            nonlocal rows_in_run
            if not run:
                return
            if isinstance(run[0], ev.EmittedImpression):
                try:
                    rb = ev.emitted_to_record_batch(run, self.config.actions)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                    rb = None
                    rows = ev.emitted_to_rows(run, self.config.actions)
            else:
                rows = run
                rb = None
            if rb is None:
                try:
                    rb = ev.examples_to_record_batch(rows)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                    # types Arrow cannot put in one column: the legacy row records
                    recs.extend(orjson.dumps(r) for r in rows)
            if rb is not None:
                recs.append(ev.encode_examples(rb))
            run.clear()
            rows_in_run = 0

        for it in items:
            kind, rows = (True, it.n) if isinstance(it, ev.EmittedImpression) else (False, 1)
            if run and (kind != isinstance(run[0], ev.EmittedImpression)
                        or rows_in_run >= ev.MAX_ROWS_PER_RECORD):
                flush()
            run.append(it)
            rows_in_run += rows
        flush()
        return recs

    @_state_limit
    def checkpoint(self) -> None:
        """Append buffered output, then commit state + input offsets + output ends at once."""
        ends: dict[str, dict[str, int]] = {}
        for name, log in self._logs().items():
            by_part: dict[int, list[bytes]] = {}
            if name == "output":
                for p, items in self._out_examples.items():
                    by_part[p] = self._example_records(items)
                self._out_examples.clear()
            else:
                for p, payload in self._out.get(name, []):
                    by_part.setdefault(p, []).append(payload)
                self._out.get(name, []).clear()
            for p, payloads in by_part.items():
                if payloads:
                    log.append(payloads, partition=p)
            ends[name] = {str(p): log.end_offset(p) for p in self._written(log)}
            if hasattr(log, "flush"):
                log.flush()
        # pending impressions new since the last checkpoint go into one batch; labelled
        # ones get (or update) an item of their own
        mem, new, own = self._mem, [], []
        for rid, pend in self._dirty.items():
            if pend.dirty and mem.get(rid) is pend:  # not emitted or spilled since
                if pend.labels is _NO_LABELS and not pend.persisted and pend.batch < 0:
                    pend.dirty = False
                    new.append((rid, pend))
                else:
                    own.append(self._pending_record(rid, pend))
        self._dirty.clear()
        self._txn.cursor(db=self._db["pending"]).putmulti(own)
        self._batches.add(self._txn, new)
        self._batches.flush(self._txn)
        self._seen.flush(self._txn)
        self._emitted.flush(self._txn)
        state = {"version": _STATE_VERSION, "owned": list(self.owned), "offsets": self.offsets,
                 "partition_max_ts": self.partition_max_ts,
                 "held": {p: [h[0] for h in held] for p, held in self._held.items() if held},
                 "counters": self.counters, "lateness": self.lateness,
                 "orphans": self._orphans, "windows": self._windows, "ends": ends,
                 "released": self._released, "quarantined": self._quarantined,
                 "expired_bucket": self._seen.horizon}
        if self._wm_ms > -math.inf:
            state["watermark_ms"] = self._wm_ms
        self._txn.put(_STATE_KEY, orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS))
        self._txn.commit()
        self._txn = self._env.begin(write=True)
        self._mark_output(ends["output"])
        self._last_ckpt = time.monotonic()

    def _pending_record(self, rid: str, pend: _Pending) -> tuple[bytes, bytes]:
        """The LMDB item of a pending impression (packed: its source, labels and deadline),
        which then leaves its batch."""
        pend.dirty, pend.persisted = False, True
        if pend.batch >= 0:
            self._batches.leave(pend)
        return rid.encode(), _pending_value(pend.src, pend.labels, pend.deadline_ms)

    def _cache(self, rid: str, pend: _Pending) -> None:
        d = pend.deadline_ms
        if d < self._next_due:
            self._next_due = d
        self._mem[rid] = pend
        self._add_due(d, rid)
        while len(self._mem) > self.config.max_pending_in_memory:
            old_rid, old = self._mem.popitem(last=False)
            if old.dirty or not old.persisted:
                self._txn.put(*self._pending_record(old_rid, old), db=self._db["pending"])
            self._on_disk_only += 1
            self._count("spilled")

    def _source_record(self, partition: int, offset: int) -> bytes | None:
        """The input record at ``(partition, offset)``, read ahead and cached."""
        key = (partition, offset)
        got = self._source_cache.pop(key, None)
        if got is not None:
            return got
        if len(self._source_cache) > _SOURCE_CACHE_MAX:
            self._source_cache.clear()
        for r in self.source.read(partition, offset, _READ_AHEAD):
            if r.offset == offset:
                got = r.value
            elif r.offset > offset:
                self._source_cache[(partition, r.offset)] = r.value
        return got

    def _load(self, rid: str, raw: bytes) -> _Pending | None:
        """A persisted pending impression: its state from LMDB, the event from the input."""
        self._on_disk_only -= 1  # read back into memory, emitted or dropped
        d = orjson.loads(raw)
        p, o = d["src"]
        payload = self._source_record(p, o)
        imp = None
        if payload is not None:
            got = ev.decode_events([payload])[0]
            imp = None if isinstance(got, InputError) else got[2]
        if imp is None or _key(str(imp.request_id)) != rid:
            logger.error("joiner: pending impression request_id=%s is no longer in the input "
                         "log at partition=%d offset=%d; dropped", rid, p, o)
            self._count("pending_lost")
            self._txn.delete(rid.encode(), db=self._db["pending"])
            return None
        return _Pending(imp, d["lab"], d["d"], dirty=False, persisted=True, src=(p, o))

    def _get_pending(self, rid: str) -> _Pending | None:
        pend = self._mem.get(rid)
        if pend is not None or not self._on_disk_only:
            return pend
        raw = self._txn.get(rid.encode(), db=self._db["pending"])
        if raw is None:
            return None
        pend = self._load(rid, raw)
        if pend is None:
            return None
        self._count("unspilled")
        self._cache(rid, pend)
        return pend

    # -- processing ----------------------------------------------------------------------
    @_state_limit
    def step(self, max_records: int = 5000, timeout_s: float = 0.0) -> int:
        """Read up to ``max_records`` per partition, join, emit what is due; returns how
        many examples were emitted (they reach the output log at the next checkpoint, which
        happens here once ``checkpoint_every_s`` has passed)."""
        self._busy = True  # cleared when the step completes (see close)
        every = self.config.checkpoint_every_s
        reads: dict[int, list[Any]] = {}
        for p in self.owned:
            recs = self.source.read(p, self.offsets[p], max_records, 0.0)
            if recs:
                reads[p] = recs
                self._idle_since.pop(p, None)
            else:
                self._idle_since.setdefault(p, time.monotonic())
        got_any = bool(reads)
        # the partitions take turns, one chunk each (the output does not depend on the
        # order, but pending state stays small when no partition runs ahead)
        limit = self.config.max_event_bytes
        k = 0
        while reads:
            for p in list(reads):
                chunk = reads[p][k:k + _DECODE_CHUNK]
                if not chunk:
                    del reads[p]
                    continue
                decoded = ev.decode_events([r.value if len(r.value) <= limit else b""
                                            for r in chunk])
                self._count("events_in", len(chunk))
                for r, got in zip(chunk, decoded, strict=True):
                    self._process(r.value, p, r.offset, got)
                self.offsets[p] = chunk[-1].offset + 1
                if self._next_due <= self._wm_ms > -math.inf:  # emission the chunk put off
                    self._emit_due(self._wm_ms)
            k += _DECODE_CHUNK
            # a checkpoint is due in the middle of a large read: stop here (the rest is
            # read again), so output is not held back by the read size
            if every and time.monotonic() - self._last_ckpt >= every:
                break
        self._advance_watermark()
        if not got_any and timeout_s > 0:
            time.sleep(min(timeout_s, 0.01))
        if time.monotonic() - self._last_ckpt >= self.config.checkpoint_every_s:
            self.checkpoint()
        self._busy = False
        n, self._step_examples = self._step_examples, 0
        return n

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

    @_state_limit
    def flush(self) -> int:
        """End of stream: emit every pending impression and close every window; returns how
        many examples were emitted."""
        self._busy = True
        for p, held in self._held.items():
            for off, payload, _ in held:
                self._dead(payload, p, off, "event time ahead of the partition's and never "
                           "confirmed by the records after it (end of stream)")
            held.clear()
        self._emit_due(math.inf)
        self._close_windows(math.inf)
        self.checkpoint()
        self._busy = False
        n, self._step_examples = self._step_examples, 0
        return n

    def _dead(self, payload: bytes, partition: int, offset: int, reason: str) -> None:
        self._count("dead_letters")
        if "dead_letter" in self.side_logs:
            rec = orjson.dumps({"partition": partition, "offset": offset, "reason": reason,
                                "payload": payload[:4096].decode("utf-8", "replace")})
            dl = self.side_logs["dead_letter"]
            self._out["dead_letter"].append((self._route(dl, partition, None), rec))

    def _process(self, payload: bytes, partition: int, offset: int,
                 decoded: tuple[dict[str, Any], str, ev.CompactImpression | None] | InputError
                 | None) -> None:
        """One input record; ``decoded``: its :func:`~freshrec.stream.events.decode_events`
        result (ignored for a record over ``max_event_bytes``). Counted in ``events_in`` by
        the caller."""
        try:
            if (type(decoded) is not tuple or len(payload) > self.config.max_event_bytes
                    or not 0 <= decoded[0]["timestamp"] < MAX_TIMESTAMP_S
                    or (decoded[2] is not None
                        and len(decoded[2]) > self.config.max_candidates)):
                reason = self._reject(payload, decoded)  # the checks below, with a message
                if reason is not None:
                    self._dead(payload, partition, offset, reason)
                    return
            assert decoded is not None and not isinstance(decoded, InputError)
            ts = float(decoded[0]["timestamp"])
            held = self._held.get(partition)
            ref = self.partition_max_ts.get(partition)
            if ts > (time.time() if ref is None else ref) + self.config.max_future_skew_s:
                self._hold(partition, offset, payload, decoded)
                return
            if held:  # the held records were outliers: this one is back in line
                for off, pay, _ in held:
                    self._count("future_timestamps")
                    self._dead(pay, partition, off, (
                        f"event time more than max_future_skew_s="
                        f"{self.config.max_future_skew_s} ahead of partition {partition}'s "
                        f"newest event time {ref}"))
                held.clear()
            self._accept(partition, offset, decoded, ts)
        except Exception as err:  # noqa: BLE001 - one record must never stop the joiner
            logger.exception("joiner: internal error on partition=%d offset=%d; record "
                             "dead-lettered", partition, offset)
            self._count("internal_errors")
            self._dead(payload, partition, offset, f"internal error: {err!r:.200}")

    def _reject(self, payload: bytes, decoded: Any) -> str | None:
        """Why a record is dead-lettered before it is looked at (None: it is not)."""
        if len(payload) > self.config.max_event_bytes:
            return (f"event of {len(payload)} bytes > max_event_bytes "
                    f"{self.config.max_event_bytes}")
        if decoded is None:
            decoded = ev.decode_events([payload])[0]
        if isinstance(decoded, InputError):
            return str(decoded)
        e, kind, imp = decoded
        ts = e["timestamp"]
        if not 0 <= ts < MAX_TIMESTAMP_S:
            return (f"{kind} event: field 'timestamp' must be seconds in [0, "
                    f"{MAX_TIMESTAMP_S:.0e}), got {brief(ts)}")
        if imp is not None and len(imp) > self.config.max_candidates:
            return (f"impression event: {len(imp)} candidates > max_candidates "
                    f"{self.config.max_candidates}")
        return None

    def _hold(self, partition: int, offset: int, payload: bytes, decoded: Any) -> None:
        """Hold back a record dated too far ahead; accept the held run once
        ``jump_confirm_records`` consecutive records confirm the jump."""
        held = self._held.setdefault(partition, [])
        held.append((offset, payload, decoded))
        if len(held) < self.config.jump_confirm_records:
            return
        logger.warning("joiner: partition=%d event time jumped ahead by more than %ds, "
                       "confirmed by %d records", partition, self.config.max_future_skew_s,
                       len(held))
        self._count("event_time_jumps")
        run, self._held[partition] = list(held), []
        for off, pay, dec in run:
            if dec is None:  # held before a restart: read back from the input log
                dec = ev.decode_events([pay])[0]
                if self._reject(pay, dec) is not None:  # the input log changed
                    self._dead(pay, partition, off, "held record no longer valid")
                    continue
            self._accept(partition, off, dec, float(dec[0]["timestamp"]))

    def _accept(self, partition: int, offset: int,
                decoded: tuple[dict[str, Any], str, ev.CompactImpression | None],
                ts: float) -> None:
        """Dedupe and join a checked record of event time ``ts``."""
        e, _, imp = decoded
        prev = self.partition_max_ts.get(partition)
        if prev is not None:
            self.lateness[bisect.bisect_left(LATENESS_BUCKETS_S, prev - ts)] += 1
        bucket = int(ts) // _BUCKET_S
        eid = e["event_id"]
        eid = eid if type(eid) is str and len(eid) <= _SHORT_ID else _key(str(eid))
        if bucket != self._prefix_bucket:  # the bucket's key prefix, made once per bucket
            self._prefix_bucket, self._prefix = bucket, bucket_key(bucket, b"")
        if not self._seen.add(self._txn, self._prefix + eid.encode(), bucket):
            self._count("duplicates")
            return
        if prev is None or ts > prev:
            self.partition_max_ts[partition] = ts
            wm_ms = math.floor(ts * 1000) - self._lateness_ms  # the partition's watermark
            if len(self.owned) == 1:  # the joiner's watermark is this partition's
                if wm_ms > self._wm_ms:
                    self._wm_ms = wm_ms
            elif prev is None or math.floor(prev * 1000) - self._lateness_ms <= self._wm_ms:
                self._advance_watermark(emit=False)  # it may have held the watermark back
        else:
            wm_ms = math.floor(prev * 1000) - self._lateness_ms
        # Emission waits for the end of the chunk (one call for many impressions) unless
        # this record could observe it: an action (it labels or finds emitted impressions,
        # in emission order with corrections), or the dedupe horizon moving (expiry). An
        # impression cannot: duplicates are found pending or emitted alike, and one whose
        # deadline the watermark passed is late either way.
        if self._next_due <= self._wm_ms > -math.inf and (
                imp is None or (self._wm_ms >= self._expiry_from_ms
                                and self._horizon(self._wm_ms) > self._seen.horizon)):
            self._emit_due(self._wm_ms)
        if imp is not None:
            if prev is not None and ts - prev > self.config.window_s:
                # it will be pending long after the records decoded with it are emitted:
                # it keeps its own candidates, not theirs
                imp = imp.detached()
            self._impression(imp, ts, (partition, offset), wm_ms)
        else:
            self._action(e, ts, wm_ms, partition)

    def _window(self, ts: float) -> dict[str, Any] | None:
        v = self.config.validation
        if v is None:
            return None
        w = str(int(ts) // v.window_s)
        return self._windows.setdefault(w, {"examples": 0, "positives": 0, "actions": 0,
                                            "joined": 0, "held": []})

    def _impression(self, imp: ev.CompactImpression, ts: float, src: tuple[int, int],
                    wm_ms: float) -> None:
        rid = imp.request_id
        rid = rid if type(rid) is str and 0 < len(rid) <= _SHORT_ID else _key(str(rid))
        c = self.counters
        c["impressions"] = c.get("impressions", 0) + 1
        if (rid in self._mem or (self._on_disk_only and self._get_pending(rid) is not None)
                or self._emitted.contains(self._txn, rid.encode())):
            self._count("duplicates")
            return
        deadline = int(round((ts + self.config.window_s) * 1000))
        if wm_ms >= deadline:  # its partition's watermark passed it: labels may be missing
            self._count("late_impressions")
            self._dead(ev.encode({"request_id": imp.request_id, "timestamp": imp.timestamp}),
                       src[0], src[1], f"late impression: partition {src[0]}'s watermark "
                       f"{wm_ms / 1000:.3f} passed its deadline {deadline / 1000:.3f}")
            return
        pend = _Pending(imp, _NO_LABELS, deadline, True, False, src)
        self._dirty[rid] = pend
        self._cache(rid, pend)
        for a in self._orphans.pop(rid, ()) if self._orphans else ():
            self._label(pend, a, float(a["timestamp"]), a.pop("_wm"))

    def _action(self, e: dict[str, Any], ts: float, wm_ms: float, partition: int) -> None:
        self._count("actions")
        if e["action"] not in self.config.actions:
            self._count("other_actions")
            return
        win = self._window(ts)
        if win is not None:
            win["actions"] += 1
        rid = _key(str(e["request_id"]))
        pend = self._get_pending(rid)
        if pend is not None:
            self._label(pend, e, ts, wm_ms)
            return
        if self._emitted.contains(self._txn, rid.encode()):
            self._count("late_after_emit")
            if self.config.emit_corrections:
                ex = {"request_id": e["request_id"], "item_id": e["item_id"],
                      "event_time": int(ts), **{a: float(a == e["action"])
                                                for a in self.config.actions},
                      "sample_rate": 1.0, "correction": 1}
                self._count("examples_out")
                self._step_examples += 1
                self._out_examples.setdefault(
                    self._route(self.output, partition, e["request_id"]), []).append(ex)
            return
        e["_wm"] = wm_ms
        self._orphans.setdefault(rid, []).append(e)

    def _label(self, pend: _Pending, e: dict[str, Any], ts: float, wm_ms: float) -> None:
        """Label ``pend`` with action ``e`` (read when its partition's watermark was
        ``wm_ms``) if the action is in the window and was not late."""
        imp_ts = float(pend.imp.timestamp)
        if not -self.config.allowed_lateness_s <= ts - imp_ts <= self.config.window_s:
            self._count("outside_window")
            return
        if wm_ms >= pend.deadline_ms:
            self._count("late_actions")
            return
        item = str(e["item_id"])
        if pend.find(e["item_id"]) is None:
            self._count("unknown_item")
            return
        if pend.labels is _NO_LABELS:
            pend.labels = {}
        acts = pend.labels.setdefault(item, [])
        if e["action"] not in acts:
            acts.append(e["action"])
        pend.dirty = True
        rid = _key(str(pend.imp.request_id))
        if self._mem.get(rid) is pend:  # written at the next checkpoint
            self._dirty[rid] = pend
        else:  # spilled already (max_pending_in_memory reached as it was read): write now
            self._txn.put(*self._pending_record(rid, pend), db=self._db["pending"])
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

    def _add_due(self, deadline_ms: int, rid: str) -> None:
        rids = self._due_rids.get(deadline_ms)
        if rids is None:
            self._due_rids[deadline_ms] = [rid]
            heapq.heappush(self._due_heap, deadline_ms)
        else:
            rids.append(rid)

    def _due(self, wm_ms: float) -> list[str]:
        """Request ids of the pending impressions due at ``wm_ms``, in order (of deadline,
        then of request id), taken off the heap."""
        lim = math.inf if wm_ms == math.inf else int(wm_ms)
        due: list[str] = []
        heap, pop, by_deadline = self._due_heap, heapq.heappop, self._due_rids
        while heap and heap[0] <= lim:
            rids = by_deadline.pop(pop(heap))
            if len(rids) == 1:
                due.append(rids[0])
            else:  # sorted by request id; one read back after a spill is there twice
                due.extend(sorted(set(rids)))
        return due

    def _refresh_next_due(self) -> None:
        self._next_due = self._due_heap[0] if self._due_heap else math.inf

    def _emit_due(self, wm_ms: float) -> None:
        """Emit the impressions whose deadline the watermark ``wm_ms`` passed."""
        if wm_ms == -math.inf:
            return
        txn, pending_db = self._txn, self._db["pending"]
        mem, emitted = self._mem, self._emitted
        positives = kept = n = 0  # counters of the emitted impressions, added once
        try:
            for rid in self._due(wm_ms):
                key = rid.encode()
                pend = mem.pop(rid, None)
                if pend is None:
                    raw = txn.get(key, db=pending_db) if self._on_disk_only else None
                    pend = None if raw is None else self._load(rid, raw)
                    if pend is None:
                        continue
                if pend.persisted:
                    txn.delete(key, db=pending_db)
                elif pend.batch >= 0:
                    self._batches.leave(pend)
                # pending until now, so not emitted before (duplicates never become pending)
                emitted.add_new(key, int(float(pend.imp.timestamp)) // _BUCKET_S)
                p, k, c = self._emit(pend)
                positives, kept, n = positives + p, kept + k, n + c
        finally:
            self._count("positives", positives)
            self._count("negatives", kept - positives)
            if n - kept:
                self._count("negatives_dropped", n - kept)
            self._count("examples_out", kept)
            self._step_examples += kept
        self._refresh_next_due()
        self._expire(wm_ms)
        self._close_windows(wm_ms / 1000.0)

    def _emit(self, pend: _Pending) -> tuple[int, int, int]:
        """Emit ``pend``; returns its positives, kept examples and candidates."""
        imp = pend.imp
        labels = _NO_CANDIDATE_LABELS
        if pend.labels:
            labels = {}
            for item, acts in pend.labels.items():
                for j in pend.find(item) or ():
                    labels[j] = acts
        keep: list[int] | None = None
        rate = self.config.negative_rate
        if rate < 1.0:
            rid, items = str(imp.request_id), imp.items
            keep = [j for j in range(len(imp)) if j in labels or self._keep(rid, items[j])]
        em = ev.EmittedImpression(imp, labels, keep, rate)
        kept = em.n
        n = kept if keep is None else len(imp)
        part = pend.src[0]
        if self.config.validation is None:
            out = self.output
            self._out_examples.setdefault(
                part if out.partitions == self.source.partitions
                else self._route(out, part, str(imp.request_id)), []).append(em)
            return len(labels), kept, n
        win = self._window(float(int(float(imp.timestamp))))
        assert win is not None
        win["examples"] += kept
        win["positives"] += len(labels)
        win["held"].extend([part, r] for r in ev.emitted_to_rows([em], self.config.actions))
        return len(labels), kept, n

    def _expire(self, wm_ms: float) -> None:
        """Forget dedupe keys and emitted ids older than the horizon; drop orphans whose
        impression can no longer come (an impression it could label is at most
        ``allowed_lateness_s`` after it, and is late once the watermark passes its deadline,
        so that is ``window_s + allowed_lateness_s`` after the action)."""
        if wm_ms == math.inf:
            return
        watermark = wm_ms / 1000.0
        if self._orphans:
            reach = self.config.window_s + self.config.allowed_lateness_s
            for rid in [r for r, acts in self._orphans.items()
                        if max(float(a["timestamp"]) for a in acts) + reach < watermark]:
                self._count("unjoined_actions", len(self._orphans.pop(rid)))
        horizon = self._horizon(wm_ms)
        if horizon <= self._seen.horizon:  # (0 until the first expiry)
            return
        self._seen.expire(horizon)
        self._emitted.expire(horizon)
        self._bound_expiry()

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
                q = self.side_logs.get("quarantine")
                if q is not None:
                    for part, ex in held:
                        self._out["quarantine"].append((self._route(q, part, ex["request_id"]),
                            orjson.dumps({"window": int(w), "partition": part, "example": ex})))
            else:
                for part, ex in held:
                    self._out_examples.setdefault(
                        self._route(self.output, part, ex["request_id"]), []).append(ex)

    def release(self, window: int) -> int:
        """Let a quarantined window's examples through to the output; returns how many."""
        q = self.side_logs.get("quarantine")
        if q is None or window in self._released:
            return 0
        n = 0
        for rec in self._iter_log(q, self._written(q)):
            d = orjson.loads(rec)
            if d["window"] == window:
                ex = d["example"]
                part = d.get("partition", ev.partition_for(str(ex["request_id"]),
                                                           self.source.partitions))
                self._out_examples.setdefault(
                    self._route(self.output, part, ex["request_id"]), []).append(ex)
                n += 1
        self._released.append(window)
        self._count("released_examples", n)
        self.checkpoint()
        return n

    @staticmethod
    def _iter_log(log: Log, partitions: Sequence[int]) -> Iterator[bytes]:
        for p in partitions:
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
        c: dict[str, Any] = dict(self.counters)
        dt = max(time.monotonic() - self._t0, 1e-9)
        stat = self._txn.stat(self._db["pending"])
        c.update({
            "events_in_per_s": c.get("events_in", 0) / dt,
            "examples_out_per_s": c.get("examples_out", 0) / dt,
            "join_rate": (c.get("joined", 0) / max(c.get("actions", 0)
                                                    - c.get("other_actions", 0), 1)),
            "pending_in_memory": len(self._mem),
            "pending_on_disk": stat["entries"] + self._batches.live(),
            "spill_bytes": stat["psize"] * (stat["leaf_pages"] + stat["branch_pages"]
                                            + stat["overflow_pages"]),
            "watermark": self.watermark if self._wm_ms > -math.inf else None,
            "partition_watermarks": {str(p): (w / 1000.0 if w > -math.inf else None)
                                     for p in self.owned
                                     for w in [self._partition_wm_ms(p)]},
            "idle_partitions": sorted(self._idle_since),
            "held_records": sum(map(len, self._held.values())),
            "watermark_lag_s": float(self.config.allowed_lateness_s),
            "lateness_histogram": dict(zip([str(b) for b in LATENESS_BUCKETS_S],
                                           self.lateness, strict=True)),
            "orphan_actions": sum(len(v) for v in self._orphans.values()),
            "quarantined": list(self._quarantined),
        })
        return c

    def close(self) -> None:
        """Checkpoint and close the state store. After an interrupted :meth:`step` or
        :meth:`flush` (an exception, Ctrl-C), nothing of it is committed: a restart resumes
        from the last checkpoint, as after a kill."""
        if self._txn is not None:
            if self._busy:
                logger.warning("joiner: closed during an interrupted step; its work is "
                               "dropped and redone from the last checkpoint")
                self._out_examples.clear()
                for pending in self._out.values():
                    pending.clear()
            else:
                self.checkpoint()
            self._txn.abort()
            self._txn = None  # type: ignore[assignment]
        self._env.close()

    def __repr__(self) -> str:
        return (f"Joiner(pending={len(self._mem)}, watermark={self.watermark}, "
                f"events_in={self.counters.get('events_in', 0)})")
