"""Ground truth of the join: the examples an event log must produce, computed from the log alone.

:func:`reference_join` reads every partition of an event log (the records in offset order)
and says, without any of the :class:`~freshrec.stream.join.Joiner`'s code, which examples a
correct joiner writes for it and with which labels; :func:`compare` counts how a joiner's
output differs. The chaos suite (``freshrec bench chaos``) uses the pair to check the joiner
after it was killed, restarted and fed garbage.

The contract, restated here independently of the joiner (it parses JSON with the standard
library, not orjson, and checks types by hand):

- **A record is valid** when it is at most ``max_event_bytes``, UTF-8 JSON (no ``NaN`` or
  ``Infinity``) holding an object of schema version 1 (``v`` absent or 1) of type
  ``impression`` (``event_id``, ``request_id``, ``user_id``: str or int; ``timestamp``: a
  number; ``user``: an object; ``candidates``: a list of at most ``max_candidates`` objects,
  each with ``item_id`` str or int, ``position`` int and ``features`` an object when present)
  or ``action`` (``event_id``, ``request_id``, ``item_id``: str or int; ``action``: str;
  ``timestamp``: a number). Booleans are not numbers, integers outside the signed 64-bit
  range are not ids (JSON readers turn them into floats), and the timestamp must lie in
  ``[min_timestamp, max_timestamp)``. Anything else is *malformed*.
- **Far-future records are dropped**: a valid record dated more than ``max_future_skew_s``
  after the newest accepted event time of its partition (``now``, the wall clock, for a
  partition's first record) does not count and does not move the partition's time.
- **Watermarks are per partition**: when a record is read, its partition's watermark is the
  newest accepted event time read from that partition before it, minus
  ``allowed_lateness_s``. An impression read when its partition's watermark is already at or
  past its deadline ``timestamp + window_s`` is *late* and produces nothing.
- **Impressions**: the first valid occurrence of a request id (compared as a string, so 7 and
  ``"7"`` are one request) counts; later ones are duplicates. Each of its candidates is one
  example, keyed ``(request_id, item_id, position)`` (ids as strings).
- **Labels**: the label of action type ``a`` is 1 iff some valid action of type ``a`` on
  ``(request_id, item_id)`` has a timestamp in ``[imp_ts - allowed_lateness_s, imp_ts +
  window_s]`` and was read before its own partition's watermark reached the impression's
  deadline (an in-window action read after that is *late* and counted, not labelled). Every
  candidate with that item id gets the label.

Event ids are assumed to name one event each (a repeated id is a redelivery of the same
bytes), and a run of far-future records long enough for a joiner to take it as a real jump in
event time is assumed absent; both hold for the simulator's streams and the chaos suite's
garbage.

Examples
--------
>>> import json
>>> imp = {"type": "impression", "event_id": "e1", "request_id": "r1", "user_id": 5,
...        "timestamp": 100, "user": {},
...        "candidates": [{"item_id": 7, "position": 0}, {"item_id": 8, "position": 1}]}
>>> click = {"type": "action", "event_id": "e2", "request_id": "r1", "item_id": 8,
...          "action": "click", "timestamp": 104}
>>> truth = reference_join([[json.dumps(e).encode() for e in (imp, click)]],
...                        TruthConfig(window_s=10, allowed_lateness_s=2, now=100.0))
>>> truth.labels
{('r1', '7', 0): (0.0,), ('r1', '8', 1): (1.0,)}
>>> compare(truth, {"request_id": ["r1"], "item_id": [8], "position": [1], "click": [0.0]})
... # doctest: +NORMALIZE_WHITESPACE
{'expected': 2, 'emitted': 1, 'lost': 1, 'duplicated': 0, 'spurious': 0, 'wrong_labels': 1,
 'missed_clicks': 1, 'corrections': 0}
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from freshrec._validate import is_int, is_number, require

__all__ = ["TruthConfig", "ReferenceJoin", "reference_join", "compare"]

_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63

#: Example key: (request id, item id, position), ids as strings.
Key = tuple[str, str, int]


@dataclass(frozen=True, kw_only=True)
class TruthConfig:
    """The joiner contract :func:`reference_join` applies (see the module docstring).

    Parameters
    ----------
    window_s, allowed_lateness_s
        The label window and the allowed lateness, as the joiner's
        :class:`~freshrec.stream.config.JoinerConfig`.
    actions
        Action types, one label each (in this order).
    max_event_bytes
        Larger records are malformed.
    max_candidates
        Impressions with more candidates are malformed (None: no bound).
    min_timestamp, max_timestamp
        Valid event times are in ``[min_timestamp, max_timestamp)``.
    max_future_skew_s
        A record dated more than this after its partition's newest event time is dropped
        (None: no bound).
    now
        The reference for a partition's first record (None: the wall clock when
        :func:`reference_join` runs).

    Examples
    --------
    >>> TruthConfig(window_s=10, allowed_lateness_s=-1)
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: TruthConfig: allowed_lateness_s must be an int >= 0, got -1
    """

    window_s: int
    allowed_lateness_s: int
    actions: tuple[str, ...] = ("click",)
    max_event_bytes: int = 1 << 20
    max_candidates: int | None = 10_000
    min_timestamp: float = 0.0
    max_timestamp: float = 1e11
    max_future_skew_s: float | None = 3600.0
    now: float | None = None

    def __post_init__(self) -> None:
        o = "TruthConfig"
        for f in ("window_s", "allowed_lateness_s", "max_event_bytes"):
            v = getattr(self, f)
            require(is_int(v) and v >= 0, o, f, "an int >= 0", v)
        require(isinstance(self.actions, tuple) and len(self.actions) >= 1
                and all(isinstance(a, str) for a in self.actions), o, "actions",
                "a non-empty tuple of strings", self.actions)
        require(self.max_candidates is None or (is_int(self.max_candidates)
                                                and self.max_candidates >= 0), o,
                "max_candidates", "None or an int >= 0", self.max_candidates)
        for f in ("min_timestamp", "max_timestamp"):
            v = getattr(self, f)
            require(is_number(v), o, f, "a number", v)
        for f in ("max_future_skew_s", "now"):
            v = getattr(self, f)
            require(v is None or (is_number(v) and v >= 0), o, f, "None or a number >= 0", v)


@dataclass
class ReferenceJoin:
    """What :func:`reference_join` found.

    Attributes
    ----------
    labels
        ``{(request_id, item_id, position): labels}``, one float per configured action.
    multiplicity
        How many candidates of the impression share a key (1 for all but repeated
        candidates); a joiner writes that many examples for it.
    counts
        ``records``, ``valid``, ``impressions``, ``actions``, ``duplicate_impressions``,
        ``late_impressions``, ``late_actions``, ``far_future``, ``positives`` and
        ``malformed:<reason>`` per reason.
    max_disorder_s
        The largest amount by which an accepted record was older than the newest accepted
        record read before it in its partition (``allowed_lateness_s`` at least this much
        means no action is late).
    """

    config: TruthConfig
    labels: dict[Key, tuple[float, ...]] = field(default_factory=dict)
    multiplicity: dict[Key, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def expected(self) -> int:
        """Examples a correct joiner writes."""
        return sum(self.multiplicity.values())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_id(v: Any) -> bool:
    return type(v) is str or (type(v) is int and _INT64_MIN <= v < _INT64_END)


def _is_number(v: Any) -> bool:
    return type(v) is int or (type(v) is float and math.isfinite(v))


_IMPRESSION = (("event_id", _is_id), ("request_id", _is_id), ("user_id", _is_id),
               ("timestamp", _is_number), ("user", lambda v: type(v) is dict),
               ("candidates", lambda v: type(v) is list))
_ACTION = (("event_id", _is_id), ("request_id", _is_id), ("item_id", _is_id),
           ("action", lambda v: type(v) is str), ("timestamp", _is_number))


def _parse(payload: bytes, c: TruthConfig) -> dict[str, Any] | str:
    """The event, or why the record is malformed."""
    if len(payload) > c.max_event_bytes:
        return "oversized"
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "not_json"
    if type(obj) is not dict:
        return "not_object"
    kind = obj.get("type")
    if kind not in ("impression", "action"):
        return "unknown_type"
    if obj.get("v", 1) != 1:
        return "schema_version"
    for name, ok in (_IMPRESSION if kind == "impression" else _ACTION):
        if name not in obj:
            return f"missing_{name}"
        if not ok(obj[name]):
            return f"bad_{name}"
    if kind == "impression":
        cands = obj["candidates"]
        if c.max_candidates is not None and len(cands) > c.max_candidates:
            return "too_many_candidates"
        for cand in cands:
            if (type(cand) is not dict or not _is_id(cand.get("item_id", None))
                    or type(cand.get("position")) is not int
                    or type(cand.get("features", {})) is not dict):
                return "bad_candidate"
    ts = obj["timestamp"]
    if not c.min_timestamp <= ts < c.max_timestamp:
        return "timestamp_out_of_range"
    return obj


def reference_join(partitions: Sequence[Iterable[bytes]],
                   config: TruthConfig) -> ReferenceJoin:
    """The examples and labels a correct joiner writes for an event log.

    Parameters
    ----------
    partitions
        Each partition's records in offset order.
    config
        :class:`TruthConfig`.

    Returns
    -------
    ReferenceJoin
    """
    c = config
    now = time.time() if c.now is None else float(c.now)
    out = ReferenceJoin(config=c)
    counts = out.counts
    # request id -> (timestamp, candidates); per (request, item): [(action, ts, wm at read)]
    impressions: dict[str, tuple[float, list[dict[str, Any]]]] = {}
    actions: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
    seen_actions: set[tuple[str, str, str, str, float]] = set()
    lateness, window = c.allowed_lateness_s, c.window_s
    for records in partitions:
        newest: float | None = None
        for payload in records:
            counts["records"] += 1
            got = _parse(bytes(payload), c)
            if isinstance(got, str):
                counts[f"malformed:{got}"] += 1
                continue
            ts = float(got["timestamp"])
            ref = now if newest is None else newest
            if c.max_future_skew_s is not None and ts > ref + c.max_future_skew_s:
                counts["far_future"] += 1
                continue
            counts["valid"] += 1
            wm = -math.inf if newest is None else newest - lateness
            newest = ts if newest is None else max(newest, ts)
            rid = str(got["request_id"])
            if got["type"] == "impression":
                counts["impressions"] += 1
                if rid in impressions:
                    counts["duplicate_impressions"] += 1
                    continue
                counts["beyond_lateness"] += ts < wm
                if wm >= ts + window:
                    counts["late_impressions"] += 1
                    impressions[rid] = (ts, [])  # later copies are still duplicates
                else:
                    impressions[rid] = (ts, got["candidates"])
            else:
                counts["actions"] += 1
                item = str(got["item_id"])
                once = (str(got["event_id"]), rid, item, got["action"], ts)
                if once in seen_actions:
                    counts["duplicate_actions"] += 1
                    continue
                seen_actions.add(once)
                counts["beyond_lateness"] += ts < wm
                actions.setdefault((rid, item), []).append((got["action"], ts, wm))
    index = {a: k for k, a in enumerate(c.actions)}
    for rid, (ts, cands) in impressions.items():
        deadline = ts + window
        labelled: dict[str, list[float]] = {}
        for cand in cands:
            item = str(cand["item_id"])
            if item in labelled:
                continue
            lab = [0.0] * len(c.actions)
            for kind, a_ts, wm in actions.get((rid, item), ()):
                k = index.get(kind)
                if k is None or not ts - lateness <= a_ts <= deadline:
                    continue
                if wm >= deadline:
                    counts["late_actions"] += 1
                    continue
                lab[k] = 1.0
            labelled[item] = lab
        for cand in cands:
            item = str(cand["item_id"])
            key = (rid, item, int(cand["position"]))
            out.multiplicity[key] = out.multiplicity.get(key, 0) + 1
            out.labels[key] = tuple(labelled[item])
            counts["positives"] += int(any(labelled[item]))
    return out


def compare(truth: ReferenceJoin, examples: Mapping[str, Sequence[Any]]) -> dict[str, int]:
    """Count how a joiner's examples differ from the reference.

    Parameters
    ----------
    truth
        :func:`reference_join`'s result for the joiner's input.
    examples
        The joiner's output as columns: ``request_id``, ``item_id``, ``position``, one label
        column per action of ``truth.config`` and optionally ``correction`` (rows with
        ``correction == 1`` are counted apart and otherwise ignored).

    Returns
    -------
    dict
        ``expected`` and ``emitted`` examples; ``lost`` (expected, not written),
        ``duplicated`` (written more often than expected), ``spurious`` (written, not
        expected), ``wrong_labels`` (written with a label other than the reference's; each
        copy counts), ``missed_clicks`` (reference examples whose first action label is 1
        that no written copy has at 1) and ``corrections``.
    """
    acts = truth.config.actions
    n = len(examples.get("request_id", ()))
    missing = [a for a in acts if a not in examples] if n else []
    if missing:
        raise ValueError(f"compare: examples have no label column {missing[0]!r}")
    cols = [examples["request_id"], examples["item_id"], examples["position"],
            *(examples[a] for a in acts)]
    corr = examples.get("correction")
    got: Counter[Key] = Counter()
    positive: set[Key] = set()
    res = {"expected": truth.expected, "emitted": 0, "lost": 0, "duplicated": 0,
           "spurious": 0, "wrong_labels": 0, "missed_clicks": 0, "corrections": 0}
    for i in range(n):
        if corr is not None and corr[i] == 1:
            res["corrections"] += 1
            continue
        res["emitted"] += 1
        pos = cols[2][i]
        key = (str(cols[0][i]), str(cols[1][i]), int(pos) if pos is not None else -1)
        got[key] += 1
        labels = tuple(float(col[i]) if col[i] is not None else math.nan for col in cols[3:])
        want = truth.labels.get(key)
        if want is None:
            res["spurious"] += 1
            continue
        if labels != want:
            res["wrong_labels"] += 1
        if labels[0] == 1.0:
            positive.add(key)
    for key, k in got.items():
        if key in truth.multiplicity:
            res["duplicated"] += max(0, k - truth.multiplicity[key])
    for key, k in truth.multiplicity.items():
        res["lost"] += max(0, k - got.get(key, 0))
        if truth.labels[key][0] == 1.0 and key not in positive:
            res["missed_clicks"] += 1
    return res
