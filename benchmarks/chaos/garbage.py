"""The chaos suite's event log: a seeded simulator stream, per partition, with garbage woven in.

:func:`build_log` returns each partition's records in the order they are to be appended. The
stream is :class:`~freshrec.data.simulate.ClickStreamSimulator`'s (duplicates and its own five
malformed kinds included, routed to partitions by request id as
:func:`~freshrec.data.simulate.write_to_log` does); :data:`KINDS` are added on top, each a few
times, at points of the stream where their partition's event time is close to theirs (so a
record that a joiner wrongly accepted would land inside a label window, not be ignored as
late). Garbage actions point at a real (request, item) pair that no valid action labels: a
joiner that let one through writes a wrong label, which the ground truth catches.

Kinds (``name: what is written``):

- ``not_json``: NUL bytes, a truncated object, an empty record, invalid UTF-8, a JSON list,
  ``null``, a JSON string;
- ``non_finite``: timestamps ``NaN``, ``Infinity``, ``-Infinity`` (not JSON, but what some
  writers emit);
- ``ts_1e30``, ``ts_2100``, ``ts_zero``, ``ts_negative``: timestamps 1e30, the year 2100,
  0 and -1e9 on actions of real pairs and on impressions of new requests (0 is a valid time,
  so that action is valid and labels nothing: it is far outside every window);
- ``int_1e25``: the integer 10**25 as an item id, a candidate's item id, a timestamp and a
  user id;
- ``long_ids``: a valid impression whose request id and event id are 600+ bytes, with a click
  in its window, and a valid click with a 650-byte event id on a real pair (both must be
  joined);
- ``huge_impression``: an impression of 12,000 candidates (over the 10,000 limit) and a
  valid one of exactly 10,000 with a click;
- ``oversized``: an in-window click of 2 MiB (over ``max_event_bytes``);
- ``unknown_type``: ``purchase_order``, a numeric type, no type, ``Impression``;
- ``wrong_types``: timestamp ``"yesterday"``, a boolean item id, a null request id, a list
  event id, candidates as an object, user as a list, a string position, schema version 2;
- ``missing_fields``: an action without timestamp or action, an impression without
  candidates or user id;
- ``poison_twin``: right before a real impression, copies of it dated 2100 or with a bad
  candidate (the real one must still count).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
from freshrec.stream.events import partition_for

KINDS = ("not_json", "non_finite", "ts_1e30", "ts_2100", "ts_zero", "ts_negative",
         "int_1e25", "long_ids", "huge_impression", "oversized", "unknown_type",
         "wrong_types", "missing_fields", "poison_twin")

YEAR_2100 = 4_102_444_800.0
BIG_INT = 10**25


@dataclass
class EventLog:
    """Each partition's records in append order, and what went into them."""

    partitions: list[list[bytes]]
    simulated: int = 0
    garbage: dict[str, int] = field(default_factory=dict)
    first_impression: dict[str, Any] | None = None

    @property
    def records(self) -> int:
        return sum(map(len, self.partitions))


class _Weaver:
    """Inserts records into partitions at the point where the partition reaches a time."""

    def __init__(self, parts: list[list[bytes]], times: list[list[float]], skip: int) -> None:
        self.parts, self.skip = parts, skip
        # running max event time per partition (for bisect), kept in step with inserts
        self.maxes = [np.maximum.accumulate(np.asarray(t, dtype=np.float64)).tolist()
                      if t else [] for t in times]

    def insert(self, p: int, at_ts: float, records: list[bytes], after: int = 0) -> int:
        """Insert ``records`` in partition ``p`` once its time reaches ``at_ts`` (never among
        its first ``skip`` records nor before index ``after``); returns the index."""
        m = self.maxes[p]
        i = max(bisect.bisect_right(m, at_ts), self.skip, after)
        i = min(i, len(m))
        self.parts[p][i:i] = records
        fill = m[i - 1] if i else -np.inf
        m[i:i] = [fill] * len(records)
        return i


def _enc(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def build_log(*, seed: int, requests: int, partitions: int, kinds: tuple[str, ...] = KINDS,
              copies: int = 2, candidates: int = 10, skip: int = 30) -> EventLog:
    """The simulated stream with ``copies`` of each garbage kind (see the module docstring).

    The simulator runs at 50 requests/s of event time with clicks after a median 2 s (most
    inside a 5 s window), 3% duplicated and 1% malformed events; garbage is never among a
    partition's first ``skip`` records.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown garbage kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    sim = ClickStreamSimulator(SimulatorConfig(
        seed=seed, n_users=2000, n_items=500, candidates=candidates, requests_per_s=50.0,
        bias=-2.0, click_delay_median_s=2.0, late_click_rate=0.02, late_click_max_s=120.0,
        duplicate_rate=0.03, malformed_rate=0.01, max_jitter_s=1.0))
    parts: list[list[bytes]] = [[] for _ in range(partitions)]
    times: list[list[float]] = [[] for _ in range(partitions)]
    imps: list[tuple[int, str, float, list[Any]]] = []  # (partition, rid, ts, items)
    clicked: set[tuple[str, Any]] = set()
    first: dict[str, Any] | None = None
    last_ts = [0.0] * partitions
    for rid, payload in sim.records(n_requests=requests):
        p = partition_for(rid, partitions) if partitions > 1 else 0
        try:
            e = orjson.loads(payload)
            ts = float(e["timestamp"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            e, ts = None, last_ts[p]
        if isinstance(e, dict) and e.get("type") == "impression" and "candidates" in e:
            imps.append((p, rid, ts, [c["item_id"] for c in e["candidates"]]))
            first = first or e
        elif isinstance(e, dict) and e.get("type") == "action":
            clicked.add((rid, e.get("item_id")))
        last_ts[p] = ts
        parts[p].append(payload)
        times[p].append(ts)
    out = EventLog(partitions=parts, simulated=sum(map(len, parts)), first_impression=first)
    weaver = _Weaver(parts, times, skip)
    rng = np.random.default_rng(seed + 7)
    serial = iter(range(10**9))
    # targets: impressions away from both ends of the stream, with an unclicked candidate
    middle = imps[len(imps) // 10: len(imps) * 8 // 10] or imps
    for kind in kinds:
        n = 0
        for _ in range(1 if kind == "huge_impression" else copies):
            p, rid, ts, items = middle[int(rng.integers(len(middle)))]
            free = [it for it in items if (rid, it) not in clicked] or items
            item = free[int(rng.integers(len(free)))]
            n += _KIND[kind](weaver, rng, serial, p, rid, ts, item, partitions)
        out.garbage[kind] = n
    return out


_Maker = Callable[[_Weaver, np.random.Generator, Any, int, str, float, Any, int], int]


def _action(serial: Any, rid: Any, item: Any, ts: Any, **extra: Any) -> dict[str, Any]:
    e = {"v": 1, "type": "action", "event_id": f"g{next(serial)}", "request_id": rid,
         "item_id": item, "action": "click", "timestamp": ts}
    e.update(extra)
    return e


def _impression(serial: Any, rid: Any, ts: Any, items: list[Any], **extra: Any
                ) -> dict[str, Any]:
    e = {"v": 1, "type": "impression", "event_id": f"g{next(serial)}", "request_id": rid,
         "user_id": 1, "timestamp": ts, "user": {},
         "candidates": [{"item_id": it, "position": j} for j, it in enumerate(items)]}
    e.update(extra)
    return e


def _near(w: _Weaver, p: int, ts: float, recs: list[bytes]) -> int:
    """Insert in the target's partition 1 s of event time after its impression."""
    w.insert(p, ts + 1.0, recs)
    return len(recs)


def _not_json(w, rng, serial, p, rid, ts, item, parts) -> int:
    recs = [b"\x00{not json", b'{"type": "action", "event_id": ', b"", b"\xff\xfe\xfd{}",
            b"[1, 2, 3]", b"null", b'"just a string"']
    return _near(w, p, ts, recs)


def _non_finite(w, rng, serial, p, rid, ts, item, parts) -> int:
    recs = []
    for bad in (b"NaN", b"Infinity", b"-Infinity"):
        recs.append(_enc(_action(serial, rid, item, 0)).replace(b'"timestamp":0',
                                                                 b'"timestamp":' + bad))
    return _near(w, p, ts, recs)


def _dated(value: float) -> Callable[..., int]:
    def make(w, rng, serial, p, rid, ts, item, parts) -> int:
        n = _near(w, p, ts, [_enc(_action(serial, rid, item, value))])
        new = f"{rid}-t{next(serial)}"
        w.insert(partition_for(new, parts), ts + 1.0,
                 [_enc(_impression(serial, new, value, [item]))])
        return n + 1
    return make


def _int_1e25(w, rng, serial, p, rid, ts, item, parts) -> int:
    """10**25 where an id, a timestamp or a user id goes (orjson cannot write it: the digits
    replace a placeholder)."""
    digits = str(BIG_INT).encode()
    t = round(ts + 1, 3)
    n = _near(w, p, ts, [_enc(_action(serial, rid, "@X@", t)).replace(b'"@X@"', digits)])
    for where in ("timestamp", "candidate", "user_id"):
        new = f"{rid}-i{next(serial)}"
        e = _impression(serial, new, t, [item])
        if where == "candidate":
            e["candidates"].append({"item_id": "@X@", "position": 1})
        else:
            e[where] = "@X@"
        w.insert(partition_for(new, parts), ts + 1.0, [_enc(e).replace(b'"@X@"', digits)])
        n += 1
    return n


def _long_ids(w, rng, serial, p, rid, ts, item, parts) -> int:
    new = f"{rid}-" + "L" * 600
    q = partition_for(new, parts)
    imp = _impression(serial, new, round(ts + 0.5, 3), [item, "long-a", "long-b"])
    imp["event_id"] = "E" * 620 + str(next(serial))
    i = w.insert(q, ts + 0.5, [_enc(imp)])
    click = _action(serial, new, "long-a", round(ts + 2.0, 3))
    click["event_id"] = "C" * 650 + str(next(serial))
    w.insert(q, ts + 2.0, [_enc(click)], after=i + 1)
    real = _action(serial, rid, item, round(ts + 2.0, 3))  # a real pair, valid: labels it
    real["event_id"] = "R" * 650 + str(next(serial))
    w.insert(p, ts + 2.0, [_enc(real)])
    return 3


def _huge_impression(w, rng, serial, p, rid, ts, item, parts) -> int:
    n = 0
    for size in (12_000, 10_000):
        new = f"{rid}-h{size}-{next(serial)}"
        q = partition_for(new, parts)
        i = w.insert(q, ts + 0.5, [_enc(_impression(serial, new, round(ts + 0.5, 3),
                                                     list(range(size))))])
        w.insert(q, ts + 2.0, [_enc(_action(serial, new, size - 1, round(ts + 2.0, 3)))],
                 after=i + 1)
        n += 2
    return n


def _oversized(w, rng, serial, p, rid, ts, item, parts) -> int:
    return _near(w, p, ts, [_enc(_action(serial, rid, item, round(ts + 1, 3),
                                         blob="x" * (2 << 20)))])


def _unknown_type(w, rng, serial, p, rid, ts, item, parts) -> int:
    base = _action(serial, rid, item, round(ts + 1, 3))
    recs = [_enc({**base, "type": "purchase_order"}), _enc({**base, "type": 5}),
            _enc({k: v for k, v in base.items() if k != "type"}),
            _enc({**base, "type": "Impression"})]
    return _near(w, p, ts, recs)


def _wrong_types(w, rng, serial, p, rid, ts, item, parts) -> int:
    t = round(ts + 1, 3)
    recs = [_enc(_action(serial, rid, item, "yesterday")),
            _enc(_action(serial, rid, True, t)),
            _enc(_action(serial, None, item, t)),
            _enc(_action(serial, rid, item, t, event_id=["e", 1])),
            _enc(_action(serial, rid, item, t, v=2))]
    new = f"{rid}-w{next(serial)}"
    q = partition_for(new, parts)
    bad_imps = [_impression(serial, new, t, [item]) for _ in range(3)]
    bad_imps[0]["candidates"] = {"0": {"item_id": item, "position": 0}}
    bad_imps[1]["user"] = [1, 2]
    bad_imps[2]["candidates"][0]["position"] = "0"
    w.insert(q, ts + 1.0, [_enc(e) for e in bad_imps])
    return _near(w, p, ts, recs) + 3


def _missing_fields(w, rng, serial, p, rid, ts, item, parts) -> int:
    base = _action(serial, rid, item, round(ts + 1, 3))
    recs = [_enc({k: v for k, v in base.items() if k != "timestamp"}),
            _enc({k: v for k, v in base.items() if k != "action"})]
    new = f"{rid}-m{next(serial)}"
    imp = _impression(serial, new, round(ts + 1, 3), [item])
    w.insert(partition_for(new, parts), ts + 1.0,
             [_enc({k: v for k, v in imp.items() if k != f}) for f in ("candidates", "user_id")])
    return _near(w, p, ts, recs) + 2


def _poison_twin(w, rng, serial, p, rid, ts, item, parts) -> int:
    """Copies of the real impression written right before it: dated 2100, and with a bad
    candidate. The real impression (found by its request id) must still be joined."""
    part = w.parts[p]
    needle = f'"request_id":"{rid}"'.encode()
    i = next((k for k, rec in enumerate(part)
              if needle in rec and b'"type":"impression"' in rec), None)
    if i is None:
        return 0
    e = orjson.loads(part[i])
    twin_future = {**e, "timestamp": YEAR_2100, "event_id": f"g{next(serial)}"}
    twin_bad = {**e, "event_id": f"g{next(serial)}",
                "candidates": [*e["candidates"], {"item_id": 1.5, "position": "x"}]}
    recs = [_enc(twin_future), _enc(twin_bad)]
    part[i:i] = recs
    m = w.maxes[p]
    m[i:i] = [m[i - 1] if i else -np.inf] * len(recs)
    return 2


_KIND: dict[str, _Maker] = {
    "not_json": _not_json, "non_finite": _non_finite, "ts_1e30": _dated(1e30),
    "ts_2100": _dated(YEAR_2100), "ts_zero": _dated(0), "ts_negative": _dated(-1e9),
    "int_1e25": _int_1e25, "long_ids": _long_ids, "huge_impression": _huge_impression,
    "oversized": _oversized, "unknown_type": _unknown_type, "wrong_types": _wrong_types,
    "missing_fields": _missing_fields, "poison_twin": _poison_twin,
}
