"""Event schema (version 1), its validation, and the joined-example records.

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

Joined-example records, format version 1 (what the joiner appends to its output log)
-------------------------------------------------------------------------------------

Each record of the output log holds *many* examples as one Arrow record batch::

    b"FRXB"                      4 bytes, magic
    <u32 little-endian version>  4 bytes, EXAMPLES_FORMAT_VERSION (1)
    <Arrow IPC stream>           the schema, one record batch, end-of-stream marker

with the columns above (``int64`` ids and times when the events had integer ids, ``string``
otherwise, ``double`` labels / ``sample_rate`` / ``true_p``, ``int64`` ``correction``,
features as Arrow infers them from the JSON values; a value an example lacks is null). The
schema metadata carries ``freshrec.examples.version``. The joiner writes one record per output
partition and checkpoint (split every :data:`MAX_ROWS_PER_RECORD` examples), in the order the
examples were emitted. The legacy format -- one example per record as an orjson object -- is
still read: :func:`decode_examples` takes any mix of the two.

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

import itertools
import operator
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from zlib_ng.zlib_ng import crc32  # zlib's CRC-32, 2.5-10x faster (SIMD)

from freshrec.errors import InputError, brief
from freshrec.stream import _kernels

__all__ = [
    "SCHEMA_VERSION",
    "EXAMPLES_FORMAT_VERSION",
    "EXAMPLES_MAGIC",
    "MAX_ROWS_PER_RECORD",
    "encode",
    "decode",
    "validate_event",
    "partition_for",
    "flatten_example",
    "examples_to_record_batch",
    "CompactImpression",
    "compact_impression",
    "decode_events",
    "EmittedImpression",
    "emitted_to_record_batch",
    "emitted_to_rows",
    "encode_examples",
    "decode_examples",
]

SCHEMA_VERSION = 1
#: version of the joined-example record format (see the module docstring)
EXAMPLES_FORMAT_VERSION = 1
#: first 4 bytes of a joined-example record in the Arrow format
EXAMPLES_MAGIC = b"FRXB"
#: the joiner splits its output into records of at most this many examples
MAX_ROWS_PER_RECORD = 16_384
_HEADER = EXAMPLES_MAGIC + struct.pack("<I", EXAMPLES_FORMAT_VERSION)
_META = {b"freshrec.examples.version": str(EXAMPLES_FORMAT_VERSION).encode()}
_IPC_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # continuation marker + zero length

_ID = (str, int)
_NUM = (int, float)
_ID_TYPES = frozenset((str, int))
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
        raise InputError(f"{where}: field {name!r} must be {expected}, got {brief(v)}")


def validate_event(ev: Mapping[str, Any], *, candidates: bool = True) -> str:
    """Check an event against schema v1; returns its type or raises :class:`InputError`
    naming the field, what was expected and what arrived. ``candidates=False`` skips the
    per-candidate checks of an impression (:func:`compact_impression` makes them)."""
    kind = ev.get("type")
    if not isinstance(kind, str) or kind not in _REQUIRED:
        raise InputError(f"event: unknown type {kind!r} (expected 'impression' or 'action')")
    v = ev.get("v", SCHEMA_VERSION)
    if v != SCHEMA_VERSION:
        raise InputError(f"{kind} event: schema version {v!r} is not {SCHEMA_VERSION}")
    where = f"{kind} event"
    for name, types in _REQUIRED[kind].items():
        _field(ev, name, types, where)
    if kind == "impression" and candidates:
        for i, c in enumerate(ev["candidates"]):
            w = f"impression event: candidates[{i}]"
            if not isinstance(c, dict):
                raise InputError(f"{w} must be an object, got {brief(c)}")
            _field(c, "item_id", _ID, w)
            _field(c, "position", (int,), w)
            if not isinstance(c.get("features", {}), dict):
                raise InputError(f"{w}: field 'features' must be an object")
    return str(kind)


#: exact types per field of each event type (what orjson produces; bool is not an int here)
_EXACT = {kind: tuple((name, frozenset(types)) for name, types in fields.items())
          for kind, fields in _REQUIRED.items()}


def _event_kind(ev: Mapping[str, Any]) -> str:
    """:func:`validate_event` with ``candidates=False``, a fast path for the usual event
    (its message when anything is off)."""
    kind = ev.get("type")
    fields = _EXACT.get(kind) if type(kind) is str else None
    if fields is not None and ev.get("v", SCHEMA_VERSION) == SCHEMA_VERSION:
        for name, types in fields:
            if type(ev.get(name)) not in types:
                break
        else:
            return kind  # type: ignore[return-value]
    return validate_event(ev, candidates=False)


def partition_for(request_id: str | int, partitions: int) -> int:
    """Partition of a request: CRC-32 of its id (stable across processes and runs).

    Examples
    --------
    >>> partition_for("r17", 4), partition_for("r17", 4) == partition_for("r17", 4)
    (1, True)
    """
    return crc32(str(request_id).encode()) % partitions


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
        # every key of every row becomes a column (from_pylist alone keeps the first row's)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return pa.RecordBatch.from_pydict({k: [r.get(k) for r in rows] for k in keys})
    return pa.RecordBatch.from_pylist(rows, schema=schema)


# -- impressions held column-wise ---------------------------------------------------------
_NO_FEATURES: dict[str, Any] = {}
_ITEM_ID = operator.itemgetter("item_id")
_POSITION = operator.itemgetter("position")
_FEATURES = operator.itemgetter("features")
_TRUE_P = operator.itemgetter("true_p")
#: One value per candidate: a list, or a tuple or a numpy array when decoded by the kernel.
Column = list[Any] | tuple[Any, ...] | np.ndarray
_INT_TYPE = frozenset((int,))
_DICT_TYPE = frozenset((dict,))


class CompactImpression:
    """A validated impression with its candidates held column-wise (no dict per candidate).

    ``features`` is ``(keys, columns)``: one list of values per feature key, ``None`` where a
    candidate lacks the key. Built by :func:`compact_impression`, or by
    :func:`decode_events`, whose plain impressions hold ``items``, ``positions``, ``true_p``
    and the feature columns as numpy arrays (int64, float64: views of the columns of their
    batch of records) instead of lists.
    """

    __slots__ = ("request_id", "user_id", "timestamp", "user", "items", "positions",
                 "true_p", "feature_keys", "feature_cols", "item_type")

    def __init__(self, request_id: str | int, user_id: str | int, timestamp: float,
                 user: dict[str, Any], items: Column, positions: Column,
                 true_p: Column | None, feature_keys: tuple[str, ...],
                 feature_cols: Sequence[Column]) -> None:
        self.request_id, self.user_id, self.timestamp = request_id, user_id, timestamp
        self.user, self.items, self.positions, self.true_p = user, items, positions, true_p
        self.feature_keys, self.feature_cols = feature_keys, feature_cols
        #: the type of every item id (int or str), None when they mix
        self.item_type: type | None = None

    def __len__(self) -> int:
        return len(self.items)

    def detached(self) -> CompactImpression:
        """The impression holding only its own candidate columns (itself: they are)."""
        return self


def compact_impression(ev: Mapping[str, Any]) -> CompactImpression:
    """Validate the candidates of an impression whose top-level fields passed
    :func:`validate_event` (``candidates=False``) and hold them column-wise; raises
    :class:`InputError` with :func:`validate_event`'s message for a bad candidate.

    Examples
    --------
    >>> imp = compact_impression({"request_id": "r1", "user_id": 4, "timestamp": 10.5,
    ...     "user": {}, "candidates": [{"item_id": 9, "position": 0, "features": {"c": 1}},
    ...                                {"item_id": 8, "position": 1}]})
    >>> imp.items, imp.feature_keys, imp.feature_cols
    ([9, 8], ('c',), [[1, None]])
    """
    cands = ev["candidates"]
    try:
        items = list(map(_ITEM_ID, cands))
        positions = list(map(_POSITION, cands))
        try:
            feats = list(map(_FEATURES, cands))
        except KeyError:
            feats = [c.get("features", _NO_FEATURES) for c in cands]
    except (KeyError, TypeError, AttributeError, IndexError):
        items = None
    item_types = set(map(type, items)) if items is not None else set()
    if (items is None or not _ID_TYPES.issuperset(item_types)
            or not _INT_TYPE.issuperset(map(type, positions))
            or not _DICT_TYPE.issuperset(map(type, feats))):
        validate_event(ev)  # raises with the message naming the bad candidate
        raise InputError("impression event: bad candidates")  # pragma: no cover
    try:
        true_p: list[Any] | None = list(map(_TRUE_P, cands))
    except KeyError:
        true_p = [c.get("true_p") for c in cands]
        if true_p.count(None) == len(true_p):
            true_p = None
    keys: tuple[str, ...] = tuple(feats[0]) if feats else ()
    try:
        cols = [list(map(operator.itemgetter(k), feats)) for k in keys]
        uniform = sum(map(len, feats)) == len(keys) * len(feats)
    except KeyError:
        uniform = False
    if not uniform:
        keys = tuple(dict.fromkeys(itertools.chain.from_iterable(feats)))
        cols = [[f.get(k) for f in feats] for k in keys]
    imp = CompactImpression(ev["request_id"], ev["user_id"], ev["timestamp"], ev["user"],
                            items, positions, true_p, keys, cols)
    if len(item_types) == 1:
        imp.item_type = item_types.pop()
    return imp


_FLOAT_OFF, _KEY_OFF = _kernels.FLOAT_OFF, _kernels.KEY_OFF


def _decode_one(payload: bytes) -> tuple[dict[str, Any], str, CompactImpression | None]:
    e = decode(payload)
    kind = validate_event(e, candidates=False)
    return e, kind, compact_impression(e) if kind == "impression" else None


def decode_events(payloads: Sequence[bytes]
                  ) -> list[tuple[dict[str, Any], str, CompactImpression | None] | InputError]:
    """Decode, validate and (impressions) hold column-wise a batch of event records.

    Per record ``(event, type, CompactImpression or None)``, or the :class:`InputError`
    that :func:`decode` / :func:`validate_event` / :func:`compact_impression` raise for it.
    The candidates of plain impressions (:mod:`freshrec.stream._kernels`: integer ids and
    positions, decimal ``true_p``, number features, the same fields in every candidate) are
    parsed straight into columns by one kernel call for the batch (the impressions of the
    batch share its numpy columns), and only the rest of the record by orjson (its
    top-level fields checked by exact type); the event dict's ``"candidates"`` is then
    ``[]`` (they are in the CompactImpression). Every other record takes the general path, so results and error
    messages are those of the general path.

    Examples
    --------
    >>> imp = encode({"type": "impression", "event_id": "e1", "request_id": "r1",
    ...               "user_id": 4, "timestamp": 10.5, "user": {},
    ...               "candidates": [{"item_id": 9, "position": 0, "features": {"c": 1}}]})
    >>> [(e["event_id"], kind, c.items.tolist(), c.feature_keys, c.feature_cols[0].tolist())
    ...  for e, kind, c in decode_events([imp])]
    [('e1', 'impression', [9], ('c',), [1])]
    """
    buf = b"".join(payloads)
    offsets = np.zeros(len(payloads) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, payloads), np.int64, len(payloads)), out=offsets[1:])
    cap = len(buf) // 4 + 1
    ints = np.empty(cap, np.int64)
    floats = np.empty(len(buf) // 8 + 1, np.float64)
    keys = np.empty((cap, 2), np.int64)
    ktype = np.empty(cap, np.int8)
    info = np.empty((len(payloads), _kernels.INFO_COLS), np.int64)
    _kernels.parse_candidates(np.frombuffer(buf, np.uint8), offsets, _kernels.WORDS, ints,
                              ints.view(np.float64), floats, keys, ktype, info)
    out: list[tuple[dict[str, Any], str, CompactImpression | None] | InputError] = []
    cols = _ChunkColumns(buf, info, ints, floats, keys, ktype)
    tops = _tops(payloads, cols.rows)
    for payload, row in zip(payloads, cols.rows, strict=True):
        try:
            ok = row[_kernels.OK]
            if not ok or (tops is None and ok == _kernels.WHOLE):
                out.append(_decode_one(payload))
                continue
            if tops is not None:
                e = next(tops)
            else:
                try:
                    e = decode(payload[:row[_kernels.SPAN_START]] + b"[]"
                               + payload[row[_kernels.SPAN_END]:])
                except InputError:  # the general path words the error for the record
                    out.append(_decode_one(payload))
                    continue
            if type(e) is not dict:
                raise InputError(f"event must be a JSON object, got {type(e).__name__}")
            kind = _event_kind(e)
            out.append((e, kind, None if kind != "impression" else cols.impression(e, row)
                        if ok == 1 else compact_impression(e)))
        except InputError as err:
            # a new error without the raised one's traceback: that holds this frame, whose
            # ``out`` holds the error, a reference cycle keeping the batch (and the caller's
            # frames, with their records) alive until the cyclic collector runs
            out.append(InputError(str(err)))
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
            out.append(InputError(f"event could not be decoded: {err!r:.200}"))
    return out


def _tops(payloads: Sequence[bytes], rows: list[list[int]]) -> Iterator[Any] | None:
    """The records the kernel parsed (their candidates replaced by ``[]``) or found to be one
    object without candidates (:data:`~freshrec.stream._kernels.WHOLE`: actions, whole),
    decoded by one orjson call as one JSON array; None when that array is not valid JSON
    (then each record is decoded alone, so that a bad one gets its own error). Each of
    these records is one object with balanced brackets and closed strings, so a valid
    array has one element per record."""
    parts: list[bytes] = []
    n = 0
    for payload, row in zip(payloads, rows, strict=True):
        ok = row[_kernels.OK]
        if ok == _kernels.WHOLE:
            parts += (b",", payload)
            n += 1
        elif ok:
            parts += (b",", payload[:row[_kernels.SPAN_START]], b"[]",
                      payload[row[_kernels.SPAN_END]:])
            n += 1
    if not n:
        return None
    parts[0] = b"["
    parts.append(b"]")
    try:
        got = orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError:
        return None
    return iter(got) if len(got) == n else None


class _Chunk:
    """The kernel's columns of one batch of records, shared by its impressions (and kept
    alive by them): ``ints`` the candidates row-major (item, position, features; a decimal
    feature as float64 bits, read through ``fints``), ``floats`` the true_p values."""

    __slots__ = ("ints", "fints", "floats")

    def __init__(self, ints: np.ndarray, floats: np.ndarray) -> None:
        self.ints, self.fints, self.floats = ints, ints.view(np.float64), floats


class _KernelImpression(CompactImpression):
    """A CompactImpression whose candidate columns are rows of its batch's :class:`_Chunk`
    (no copy and no Python value per candidate: the columns are numpy views made when
    asked for, and emission gathers the examples of many impressions at once, see
    :func:`emitted_to_record_batch`)."""

    __slots__ = ("chunk", "io", "n", "fo", "types")

    def __init__(self, request_id: str | int, user_id: str | int, timestamp: float,
                 user: dict[str, Any], chunk: _Chunk, io: int, n: int, fo: int,
                 names: tuple[str, ...], types: tuple[int, ...]) -> None:
        self.request_id, self.user_id, self.timestamp = request_id, user_id, timestamp
        self.user, self.feature_keys = user, names
        self.chunk, self.io, self.n, self.fo, self.types = chunk, io, n, fo, types
        self.item_type = int if n else None

    # read-only views in place of the base class's attributes
    @property
    def items(self) -> Column:  # type: ignore[override]
        io = self.io
        return self.chunk.ints[io:io + self.n * (2 + len(self.types)):2 + len(self.types)]

    @property
    def positions(self) -> Column:  # type: ignore[override]
        io = self.io + 1
        return self.chunk.ints[io:io + self.n * (2 + len(self.types)):2 + len(self.types)]

    @property
    def true_p(self) -> Column | None:  # type: ignore[override]
        return None if self.fo < 0 else self.chunk.floats[self.fo:self.fo + self.n]

    @property
    def feature_cols(self) -> Sequence[Column]:  # type: ignore[override]
        w = 2 + len(self.types)
        end = self.io + self.n * w
        return tuple((self.chunk.fints if t else self.chunk.ints)[self.io + 2 + q:end:w]
                     for q, t in enumerate(self.types))

    def __len__(self) -> int:
        return self.n

    def detached(self) -> CompactImpression:
        """A copy of this impression that holds its own rows of the chunk, not the chunk: an
        impression that stays pending long after the other records of its chunk would keep
        all their candidates in memory (a joiner decodes 64 records at once).

        >>> imp = {"type": "impression", "event_id": "e", "request_id": "r", "user_id": 1,
        ...        "timestamp": 5, "user": {}, "candidates": [
        ...            {"item_id": 9, "position": 0, "features": {"c": 1}}]}
        >>> (_, _, a), (_, _, b) = decode_events([encode(imp), encode({**imp, "event_id": "f"})])
        >>> own = b.detached()
        >>> own.items.tolist(), own.feature_cols[0].tolist()
        ([9], [1])
        >>> own.chunk.ints.size, b.chunk.ints.size  # its row (item, position, c); the batch's
        (3, 6)
        """
        w = 2 + len(self.types)
        floats = self.chunk.floats[self.fo:self.fo + self.n] if self.fo >= 0 \
            else self.chunk.floats[:0]
        return _KernelImpression(self.request_id, self.user_id, self.timestamp, self.user,
                                 _Chunk(self.chunk.ints[self.io:self.io + self.n * w].copy(),
                                        floats.copy()),
                                 0, self.n, 0 if self.fo >= 0 else -1, self.feature_keys,
                                 self.types)


class _ChunkColumns:
    """The kernel's output for a batch of records, turned into CompactImpressions that share
    one :class:`_Chunk` (key names made once per run of records with the same keys)."""

    __slots__ = ("rows", "_buf", "_keys", "_ktype", "_names", "_chunk")

    def __init__(self, buf: bytes, info: np.ndarray, ints: np.ndarray, floats: np.ndarray,
                 keys: np.ndarray, ktype: np.ndarray) -> None:
        self.rows: list[list[int]] = info.tolist()
        self._buf, self._keys, self._ktype = buf, keys, ktype
        self._names: dict[int, tuple[tuple[str, ...], tuple[int, ...]]] = {}  # by SCHEMA
        used = fused = 0  # the int and float slots filled (the records' slots follow)
        for row in self.rows:
            if row[_kernels.OK] == 1:
                n = row[_kernels.N]
                used = row[_kernels.INT_OFF] + n * (2 + row[_kernels.K])
                if row[_FLOAT_OFF] >= 0:
                    fused = row[_FLOAT_OFF] + n
        # copies of the filled part: the buffers are sized for the worst case
        self._chunk = _Chunk(ints[:used].copy(), floats[:fused].copy())

    def _schema(self, row: list[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        got = self._names.get(row[_kernels.SCHEMA])
        if got is None:
            ko, k = row[_KEY_OFF], row[_kernels.K]
            buf = self._buf
            got = (tuple(buf[a + 1:b - 1].decode("ascii")
                         for a, b in self._keys[ko:ko + k].tolist()),
                   tuple(self._ktype[ko:ko + k].tolist()))
            self._names[row[_kernels.SCHEMA]] = got
        return got

    def impression(self, e: Mapping[str, Any], row: list[int]) -> CompactImpression:
        """The CompactImpression of a record the kernel parsed (``row``: its ``info`` row)."""
        names, types = self._schema(row)
        return _KernelImpression(e["request_id"], e["user_id"], e["timestamp"], e["user"],
                                 self._chunk, row[_kernels.INT_OFF], row[_kernels.N],
                                 row[_FLOAT_OFF], names, types)


class EmittedImpression:
    """An impression the joiner emits: which candidates are kept and which are labelled.

    Parameters
    ----------
    imp
        The impression.
    labels
        ``{candidate index: actions}`` of the labelled candidates.
    keep
        Sorted indices of the kept candidates (every labelled one among them); ``None``: all.
    negative_rate
        ``sample_rate`` of the kept negatives.
    """

    __slots__ = ("imp", "labels", "keep", "negative_rate", "n")

    def __init__(self, imp: CompactImpression, labels: dict[int, list[str]],
                 keep: list[int] | None, negative_rate: float) -> None:
        self.imp, self.labels, self.keep, self.negative_rate = imp, labels, keep, negative_rate
        #: how many examples it makes (``len``; an attribute: encoders read it per
        #: impression, and a Python ``__len__`` is a call each time)
        self.n = len(imp) if keep is None else len(keep)

    def __len__(self) -> int:
        return self.n


def _as_list(values: Column) -> list[Any]:
    if isinstance(values, np.ndarray):
        return values.tolist()
    return values if isinstance(values, list) else list(values)


def _kept(values: Column, keep: list[int] | None) -> Column:
    if keep is None:
        return values
    if isinstance(values, np.ndarray):
        return values[keep]
    return [values[j] for j in keep]


def _concat(parts: Sequence[Column], dtype: pa.DataType | None = None) -> pa.Array:
    """One Arrow array of the parts: numpy concatenation when every part is an array,
    Python values otherwise (the same values and types either way)."""
    kinds = set(map(type, parts))
    if kinds == {np.ndarray}:
        return pa.array(np.concatenate(parts), dtype)
    if np.ndarray not in kinds:
        return pa.array(list(itertools.chain.from_iterable(parts)), dtype)
    return pa.array(list(itertools.chain.from_iterable(
        p.tolist() if isinstance(p, np.ndarray) else p for p in parts)), dtype)


def _kept_parts(emitted: Sequence[EmittedImpression], column: list[Column]) -> list[Column]:
    """The kept values of one column (``column[i]`` of ``emitted[i]``) per impression."""
    if all(e.keep is None for e in emitted):
        return column
    return [c if e.keep is None else _kept(c, e.keep)
            for e, c in zip(emitted, column, strict=True)]


#: slots of batch columns copied whole for the examples of a run even when they are mostly
#: other impressions' (beyond that and 4x the run's own, only its impressions' rows are)
_GATHER_SLACK = 4096


def _gather(emitted: Sequence[EmittedImpression], imps: list[CompactImpression],
            counts: np.ndarray, starts: np.ndarray, n: int) -> dict[str, pa.Array] | None:
    """The candidate columns (``item_id``, ``position``, ``true_p`` if any, ``i_<key>``) of
    emitted impressions that the kernel parsed with the same feature keys, gathered from
    their batches' columns by one numpy take per column; None for any other run."""
    some = next((i for i in imps if len(i)), None)  # (one without candidates has no keys)
    if type(some) is not _KernelImpression:
        return None
    types, names = some.types, some.feature_keys
    for i in imps:
        if type(i) is not _KernelImpression or (
                i.n and (i.types != types or i.feature_keys != names)):
            return None
    kimps: list[_KernelImpression] = imps  # type: ignore[assignment]
    m, w = len(kimps), 2 + len(types)
    chunks = {id(i.chunk): i.chunk for i in kimps}
    io = np.fromiter((i.io for i in kimps), np.int64, m)
    fo = np.fromiter((i.fo for i in kimps), np.int64, m)
    sizes = np.fromiter((len(c.ints) for c in chunks.values()), np.int64, len(chunks))
    ns = np.fromiter((i.n for i in kimps), np.int64, m)
    if sizes.sum() <= 4 * w * ns.sum() + _GATHER_SLACK:  # whole batches, each copied once
        which = {cid: k for k, cid in enumerate(chunks)}
        ci = np.fromiter((which[id(i.chunk)] for i in kimps), np.int64, m)
        fsizes = np.fromiter((len(c.floats) for c in chunks.values()), np.int64, len(chunks))
        ints = np.concatenate([c.ints for c in chunks.values()])
        floats = np.concatenate([c.floats for c in chunks.values()])
        row0 = (np.cumsum(sizes) - sizes)[ci] + io
        frow0 = (np.cumsum(fsizes) - fsizes)[ci] + fo
    else:  # the batches are mostly other impressions': only these impressions' rows
        ints = np.concatenate([i.chunk.ints[i.io:i.io + i.n * w] for i in kimps])
        floats = np.concatenate([i.chunk.floats[i.fo:i.fo + i.n] for i in kimps
                                 if i.fo >= 0] or [np.zeros(0)])
        row0 = np.cumsum(ns * w) - ns * w
        fn = np.where(fo >= 0, ns, 0)
        frow0 = np.cumsum(fn) - fn
    # the candidate index of each example within its impression
    if all(e.keep is None for e in emitted):
        cand = np.arange(n, dtype=np.int64) - np.repeat(starts, counts)
    else:
        cand = np.fromiter(itertools.chain.from_iterable(
            range(len(e.imp)) if e.keep is None else e.keep for e in emitted), np.int64, n)
    slot = np.repeat(row0, counts) + cand * w
    out: dict[str, pa.Array] = {"item_id": pa.array(ints[slot]),
                                "position": pa.array(ints[slot + 1])}
    has = fo >= 0
    if has.any():
        fslot = np.repeat(frow0, counts) + cand
        if has.all():
            out["true_p"] = pa.array(floats[fslot])
        else:
            missing = ~np.repeat(has, counts)
            fslot[missing] = 0
            if not len(floats):  # the impressions with true_p have no candidates
                floats = np.zeros(1)
            out["true_p"] = pa.array(floats[fslot], mask=missing)
    fints = ints.view(np.float64)
    for q, (key, t) in enumerate(zip(names, types, strict=True)):
        out[f"i_{key}"] = pa.array((fints if t else ints)[slot + 2 + q])
    return out


def emitted_to_rows(emitted: Sequence[EmittedImpression],
                    actions: Sequence[str]) -> list[dict[str, Any]]:
    """The legacy row form (one dict per example, as :func:`flatten_example`)."""
    rows = []
    for e in emitted:
        imp = e.imp
        user = {f"u_{k}": v for k, v in imp.user.items()}
        items, positions = _as_list(imp.items), _as_list(imp.positions)
        true_p = _as_list(imp.true_p) if imp.true_p is not None else None
        feats = [(f"i_{k}", _as_list(col))
                 for k, col in zip(imp.feature_keys, imp.feature_cols, strict=True)]
        idx = range(len(imp)) if e.keep is None else e.keep
        for j in idx:
            acts = e.labels.get(j, ())
            ex: dict[str, Any] = {"request_id": imp.request_id, "user_id": imp.user_id,
                                  "item_id": items[j], "position": positions[j],
                                  "event_time": int(imp.timestamp)}
            for a in actions:
                ex[a] = float(a in acts)
            ex["sample_rate"] = 1.0 if acts else e.negative_rate
            ex["correction"] = 0
            if true_p is not None:
                ex["true_p"] = true_p[j]
            ex.update(user)
            for name, col in feats:
                ex[name] = col[j]  # a missing key is null, as in Arrow
            rows.append(ex)
    return rows


def emitted_to_record_batch(emitted: Sequence[EmittedImpression],
                            actions: Sequence[str]) -> pa.RecordBatch:
    """Examples of emitted impressions as one record batch, built column by column.

    Raises :class:`pyarrow.ArrowInvalid` / ``ArrowTypeError`` when a column mixes types
    that Arrow cannot hold in one array (callers fall back to :func:`emitted_to_rows`).

    Examples
    --------
    >>> imp = compact_impression({"request_id": "r1", "user_id": 4, "timestamp": 10.5,
    ...     "user": {"age": 3}, "candidates": [{"item_id": 9, "position": 0},
    ...                                        {"item_id": 8, "position": 1}]})
    >>> rb = emitted_to_record_batch([EmittedImpression(imp, {1: ["click"]}, None, 1.0)],
    ...                              ["click"])
    >>> rb.to_pylist()[1]  # doctest: +NORMALIZE_WHITESPACE
    {'request_id': 'r1', 'user_id': 4, 'item_id': 8, 'position': 1, 'event_time': 10,
     'click': 1.0, 'sample_rate': 1.0, 'correction': 0, 'u_age': 3}
    """
    counts = np.fromiter([e.n for e in emitted], np.int64, len(emitted))
    n = int(counts.sum())
    starts = np.zeros(len(emitted), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    parent = pa.array(np.repeat(np.arange(len(emitted), dtype=np.int64), counts))
    imps = [e.imp for e in emitted]
    gathered = _gather(emitted, imps, counts, starts, n)

    def per_example(values: list[Any]) -> pa.Array:
        return pa.array(values).take(parent)

    cols: dict[str, pa.Array] = {
        "request_id": per_example([i.request_id for i in imps]),
        "user_id": per_example([i.user_id for i in imps]),
    }
    if gathered is not None:
        cols["item_id"], cols["position"] = gathered.pop("item_id"), gathered.pop("position")
    else:
        cols["item_id"] = _concat(_kept_parts(emitted, [i.items for i in imps]))
        cols["position"] = _concat(_kept_parts(emitted, [i.positions for i in imps]))
    cols["event_time"] = pa.array(
        np.repeat(np.fromiter((int(i.timestamp) for i in imps), np.int64, len(imps)), counts))
    lab = np.zeros((len(actions), n))
    positive = np.zeros(n, bool)
    a_index = {a: k for k, a in enumerate(actions)}
    for e, s in zip(emitted, starts.tolist(), strict=True):
        if not e.labels:
            continue
        for j, acts in e.labels.items():
            row = s + (j if e.keep is None else e.keep.index(j))
            positive[row] = True
            for a in acts:
                lab[a_index[a], row] = 1.0
    for k, a in enumerate(actions):
        cols[a] = pa.array(lab[k])
    rates = np.repeat(np.fromiter((e.negative_rate for e in emitted), np.float64,
                                  len(emitted)), counts)
    rates[positive] = 1.0
    cols["sample_rate"] = pa.array(rates)
    cols["correction"] = pa.array(np.zeros(n, np.int64))
    if gathered is not None:
        if "true_p" in gathered:
            cols["true_p"] = gathered.pop("true_p")
    elif any(i.true_p is not None for i in imps):
        cols["true_p"] = _concat([_kept(e.imp.true_p, e.keep) if e.imp.true_p is not None
                                  else [None] * len(e) for e in emitted], pa.float64())
    # the user features as one struct array (one conversion for every key; its fields are
    # the keys in first-seen order, null where an impression lacks one)
    users = pa.array([i.user for i in imps])
    if isinstance(users, pa.StructArray):
        for f, col in zip(users.type, users.flatten(), strict=True):
            cols[f"u_{f.name}"] = col.take(parent)
    if gathered is not None:
        cols.update(gathered)
        return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols),
                                          metadata=_META)
    # the decoder gives every impression of a run with the same keys one tuple of names
    key_sets = set({id(i.feature_keys): i.feature_keys for i in imps}.values())
    if len(key_sets) == 1:  # the same keys in the same order: column q is key q
        for q, key in enumerate(key_sets.pop()):
            cols[f"i_{key}"] = _concat(_kept_parts(emitted, [i.feature_cols[q] for i in imps]))
        return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols),
                                          metadata=_META)
    fkeys = dict.fromkeys(itertools.chain.from_iterable(i.feature_keys for i in imps))
    for key in fkeys:
        cols[f"i_{key}"] = _concat([_kept(e.imp.feature_cols[e.imp.feature_keys.index(key)],
                                          e.keep) if key in e.imp.feature_keys
                                    else [None] * len(e) for e in emitted])
    return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols),
                                      metadata=_META)


def encode_examples(batch: pa.RecordBatch) -> bytes:
    """One joined-example record (format v1: magic, version, Arrow IPC stream).

    Examples
    --------
    >>> rb = pa.RecordBatch.from_pylist([{"item_id": 1, "click": 1.0}])
    >>> decode_examples([encode_examples(rb)])[0].to_pylist()
    [{'item_id': 1, 'click': 1.0}]
    """
    # the bytes of an IPC stream writer (schema message, batch message, end marker), in one
    # copy: the stream writer grows its buffer write by write
    return b"".join((_HEADER, batch.schema.serialize(), batch.serialize(), _IPC_END))


def decode_examples(values: Sequence[bytes]) -> tuple[pa.RecordBatch | None, int]:
    """Records of a joined-example log -> ``(one record batch in record order, rejected)``.

    Takes Arrow records (format v1) and legacy orjson rows (one example per record) in any
    mix. ``rejected`` counts the records skipped: not an example record, an unknown format
    version, or columns whose types cannot be unified with the records before them. Returns
    ``(None, rejected)`` when no example is left.

    Examples
    --------
    >>> rb, bad = decode_examples([b'{"item_id": 1, "click": 0.0}', b"not json",
    ...     encode_examples(pa.RecordBatch.from_pylist([{"item_id": 2, "click": 1.0}]))])
    >>> rb.to_pylist(), bad
    ([{'item_id': 1, 'click': 0.0}, {'item_id': 2, 'click': 1.0}], 1)
    """
    parts: list[tuple[pa.RecordBatch, int]] = []  # (batch, records it came from)
    rows: list[dict[str, Any]] = []
    rejected = 0

    def flush_rows() -> None:
        nonlocal rejected
        if not rows:
            return
        try:
            parts.append((examples_to_record_batch(rows), len(rows)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            for r in rows:  # types that mix within the rows: one batch per row
                try:
                    parts.append((examples_to_record_batch([r]), 1))
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                    rejected += 1
        rows.clear()

    for v in values:
        if v[:4] == EXAMPLES_MAGIC:
            flush_rows()
            if v[4:8] != _HEADER[4:]:
                rejected += 1
                continue
            try:
                reader = pa.ipc.open_stream(pa.py_buffer(v)[8:])
                parts += [(b, 1) for b in reader if b.num_rows]
            except (pa.ArrowInvalid, OSError):
                rejected += 1
            continue
        try:
            ex = orjson.loads(v)
        except orjson.JSONDecodeError:
            rejected += 1
            continue
        if isinstance(ex, dict):
            rows.append(ex)
        else:
            rejected += 1
    flush_rows()
    if not parts:
        return None, rejected
    if len(parts) == 1:
        return parts[0][0], rejected
    tables = [pa.Table.from_batches([b]) for b, _ in parts]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        keep = [tables[0]]
        schema = tables[0].schema
        for t, (_, nrec) in zip(tables[1:], parts[1:], strict=True):
            try:
                schema = pa.unify_schemas([schema, t.schema], promote_options="permissive")
                keep.append(t)
            except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
                rejected += nrec
        table = pa.concat_tables(keep, promote_options="permissive")
    table = table.combine_chunks()
    return table.to_batches()[0], rejected
