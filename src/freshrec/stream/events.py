"""Event schema (version 1), its validation, and the joined-example record.

Events travel through the log as JSON objects (encoded with orjson: one event per record;
see ``docs/stream.md`` for why rows and not Arrow batches). Two types:

``impression`` -- a request was served and its candidates shown::

    {"v": 1, "type": "impression", "event_id": "e1", "request_id": "r1", "user_id": 42,
     "timestamp": 1700000000.25,            # event time, seconds (float or int)
     "user": {"gender": 1, "recent_clicks": [3, 9]},          # user features
     "candidates": [{"item_id": 7, "position": 0, "features": {"category": 3},
                     "true_p": 0.031}, ...],                  # true_p: simulator only
     "model_version": 12}                                     # optional

``action`` -- the user acted on one candidate of a request::

    {"v": 1, "type": "action", "event_id": "e2", "request_id": "r1", "item_id": 7,
     "action": "click", "timestamp": 1700000004.0}

A *joined example* (the joiner's output) is a flat record: ``request_id, user_id, item_id,
position, event_time`` (impression time, int seconds), one float label column per configured
action, ``sample_rate`` (negative keep-rate, 1.0 for positives), ``correction`` (1 for a late
positive emitted after its negative), ``true_p`` when the impression had it, then the user
features as ``u_<name>`` and the candidate features as ``i_<name>`` (raw scalars, strings or
lists of ints).

Examples
--------
>>> ev = {"type": "action", "event_id": "e2", "request_id": "r1", "item_id": 7,
...       "action": "click", "timestamp": 5}
>>> validate_event(decode(encode(ev)))
'action'
>>> validate_event({"type": "action", "event_id": "e2"})
Traceback (most recent call last):
...
freshrec.errors.InputError: action event: field 'request_id' is missing
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa

from freshrec.errors import InputError

__all__ = [
    "SCHEMA_VERSION",
    "encode",
    "decode",
    "validate_event",
    "partition_for",
    "flatten_example",
    "examples_to_record_batch",
]

SCHEMA_VERSION = 1

_ID = (str, int)
_NUM = (int, float)
_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "impression": {"event_id": _ID, "request_id": _ID, "user_id": _ID, "timestamp": _NUM,
                   "user": (dict,), "candidates": (list,)},
    "action": {"event_id": _ID, "request_id": _ID, "item_id": _ID, "action": (str,),
               "timestamp": _NUM},
}


def encode(event: Mapping[str, Any]) -> bytes:
    """One event as JSON bytes (orjson; non-string dict keys are refused)."""
    return orjson.dumps(event)


def decode(data: bytes) -> dict[str, Any]:
    """JSON bytes -> event dict; :class:`InputError` for bytes that are not a JSON object."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InputError(f"event is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise InputError(f"event must be a JSON object, got {type(obj).__name__}")
    return obj


def _field(ev: Mapping[str, Any], name: str, types: tuple[type, ...], where: str) -> None:
    if name not in ev:
        raise InputError(f"{where}: field {name!r} is missing")
    v = ev[name]
    if not isinstance(v, types) or isinstance(v, bool):
        expected = " or ".join(t.__name__ for t in types)
        raise InputError(f"{where}: field {name!r} must be {expected}, got {v!r:.60}")


def validate_event(ev: Mapping[str, Any]) -> str:
    """Check an event against schema v1; returns its type or raises :class:`InputError`
    naming the field, what was expected and what arrived."""
    kind = ev.get("type")
    if kind not in _REQUIRED:
        raise InputError(f"event: unknown type {kind!r} (expected 'impression' or 'action')")
    v = ev.get("v", SCHEMA_VERSION)
    if v != SCHEMA_VERSION:
        raise InputError(f"{kind} event: schema version {v!r} is not {SCHEMA_VERSION}")
    where = f"{kind} event"
    for name, types in _REQUIRED[kind].items():
        _field(ev, name, types, where)
    if kind == "impression":
        for i, c in enumerate(ev["candidates"]):
            w = f"impression event: candidates[{i}]"
            if not isinstance(c, dict):
                raise InputError(f"{w} must be an object, got {c!r:.60}")
            _field(c, "item_id", _ID, w)
            _field(c, "position", (int,), w)
            if not isinstance(c.get("features", {}), dict):
                raise InputError(f"{w}: field 'features' must be an object")
    return str(kind)


def partition_for(request_id: str | int, partitions: int) -> int:
    """Partition of a request: CRC-32 of its id (stable across processes and runs).

    Examples
    --------
    >>> partition_for("r17", 4), partition_for("r17", 4) == partition_for("r17", 4)
    (1, True)
    """
    return zlib.crc32(str(request_id).encode()) % partitions


def flatten_example(
    impression: Mapping[str, Any],
    candidate: Mapping[str, Any],
    labels: Mapping[str, float],
    sample_rate: float,
    correction: int = 0,
) -> dict[str, Any]:
    """One joined example (flat dict) from an impression, one of its candidates and labels.

    Examples
    --------
    >>> imp = {"request_id": "r1", "user_id": 4, "timestamp": 10.7, "user": {"age": 3}}
    >>> flatten_example(imp, {"item_id": 9, "position": 2, "features": {"cat": 1}},
    ...                 {"click": 1.0}, 1.0)  # doctest: +NORMALIZE_WHITESPACE
    {'request_id': 'r1', 'user_id': 4, 'item_id': 9, 'position': 2, 'event_time': 10,
     'click': 1.0, 'sample_rate': 1.0, 'correction': 0, 'u_age': 3, 'i_cat': 1}
    """
    ex: dict[str, Any] = {
        "request_id": impression["request_id"],
        "user_id": impression["user_id"],
        "item_id": candidate["item_id"],
        "position": candidate["position"],
        "event_time": int(impression["timestamp"]),
    }
    ex.update(labels)
    ex["sample_rate"] = sample_rate
    ex["correction"] = correction
    if "true_p" in candidate:
        ex["true_p"] = candidate["true_p"]
    for k, v in impression.get("user", {}).items():
        ex[f"u_{k}"] = v
    for k, v in candidate.get("features", {}).items():
        ex[f"i_{k}"] = v
    return ex


def examples_to_record_batch(
    examples: Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    schema: pa.Schema | None = None,
) -> pa.RecordBatch:
    """Joined examples -> one :class:`pyarrow.RecordBatch` (columns inferred unless a schema
    is given; a column missing from an example is null).

    Examples
    --------
    >>> rb = examples_to_record_batch([{"item_id": 1, "click": 1.0, "u_recent": [3, 4]},
    ...                                {"item_id": 2, "click": 0.0, "u_recent": []}])
    >>> rb.num_rows, rb.schema.field("u_recent").type
    (2, ListType(list<item: int64>))
    """
    rows = list(examples)
    if schema is None:
        return pa.RecordBatch.from_pylist(rows)
    return pa.RecordBatch.from_pylist(rows, schema=schema)
