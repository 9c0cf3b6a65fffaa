"""Scoring requests: the JSON shape, its validation, and the KServe v2 tensor shape.

A request scores one user against N candidates::

    {"request_id": "r1",                      # optional (generated when absent)
     "user_id": 42,                           # optional (or inside "user")
     "user": {"gender": 1, "recent_clicks": [3, 9]},
     "candidates": [{"item_id": 7, "category": 3}, {"item_id": 8}],
     "now": 1764633600.0}                     # optional event time, seconds

or, with candidates named by id only (``"candidate_ids": [7, 8]`` instead of
``"candidates"``), each candidate takes the features the server's feature index holds for its
item (from the item catalogue it loaded, ``freshrec serve --items``, or from an earlier
request that carried them); an item it does not know is scored with its id alone. The body is
then a few hundred bytes instead of tens of kilobytes, and the server skips parsing and
comparing every candidate's features.

Feature names are the impression event's (``freshrec.stream.events``): the joiner turns user
feature ``gender`` into column ``u_gender`` and candidate feature ``category`` into
``i_category``, and the model's slots read those columns, so serving and training see the
same values. A candidate may also carry its features under ``"features"`` (the impression
event's form).

Examples
--------
>>> req = parse_request(b'{"user": {"age": 3}, "candidates": [{"item_id": 1}], "user_id": 5}')
>>> req.user_id, req.user, [c["item_id"] for c in req.candidates], len(req.request_id) > 0
(5, {'age': 3}, [1], True)
>>> parse_request(b'{"candidates": [{"item": 1}]}')
Traceback (most recent call last):
...
freshrec.serve.request.RequestError: candidates[0].item_id: missing (each candidate needs one)
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from freshrec.errors import FieldError, brief

__all__ = ["MAX_CLOCK_SKEW_S", "RequestError", "ScoreRequest", "build_v2_request", "candidate",
           "parse_request", "parse_v2_request"]

_IDS = (int, str)
#: How far a request's ``now`` may be from the server's wall clock, in seconds (a day).
MAX_CLOCK_SKEW_S = 86_400.0
_counter = itertools.count()
_prefix = os.urandom(4).hex()


class RequestError(FieldError):
    """A request the server refuses: ``status`` (4xx) and the ``field`` at fault.

    Examples
    --------
    >>> e = RequestError("candidates", "too many (1001 > 1000)")
    >>> str(e), e.status
    ('candidates: too many (1001 > 1000)', 400)
    """

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(field, message)
        self.status = status


@dataclass(slots=True)
class ScoreRequest:
    """A parsed request: who, which candidates (flat feature dicts with ``item_id``), when."""

    request_id: str | int
    user: dict[str, Any]
    candidates: list[dict[str, Any]]
    user_id: str | int | None = None
    now: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Candidates named by id (``candidate_ids``): ``candidates`` hold ``{"item_id": id}``
    #: until the predictor replaces them with the feature index's dicts.
    by_id: bool = False
    #: Each candidate's impression-event JSON around its position, ``(head, tail)``, set by
    #: the predictor from its feature index (see :func:`~freshrec.serve.impressions.
    #: impression_record`); ``None``: the impression is built from the candidates.
    fragments: list[tuple[bytes, bytes] | None] | None = None
    #: KServe v2: the client asked for the scores as binary data (``binary_data_output``
    #: in the request's ``parameters``, or ``binary_data`` in the ``scores`` output's).
    binary_output: bool = False


def new_request_id() -> str:
    """A process-unique request id (random prefix + counter)."""
    return f"{_prefix}-{next(_counter)}"


def _check_id(v: Any, where: str) -> Any:
    if isinstance(v, bool) or not isinstance(v, _IDS):
        raise RequestError(where, f"must be an int or a string, got {brief(v)}")
    return v


def candidate(c: Any, where: str) -> dict[str, Any]:
    """Validate one candidate object into a flat feature dict; errors name ``where`` (e.g.
    ``candidates[3]``; empty: the fields themselves).

    >>> candidate({"item_id": 7, "features": {"cat": 1}}, "candidates[0]")
    {'cat': 1, 'item_id': 7}
    """
    pre = f"{where}." if where else ""
    if type(c) is not dict:
        raise RequestError(where or "candidate", f"must be an object, got {brief(c)}")
    if "item_id" not in c:
        raise RequestError(f"{pre}item_id", "missing (each candidate needs one)")
    iid = c["item_id"]
    if type(iid) is not int and type(iid) is not str:
        _check_id(iid, f"{pre}item_id")
    feats = c.get("features")
    if feats is not None:
        if type(feats) is not dict:
            raise RequestError(f"{pre}features", f"must be an object, got {brief(feats)}")
        c = {**feats, **{k: v for k, v in c.items() if k != "features"}}
    return c


def build_request(obj: Any, max_candidates: int) -> ScoreRequest:
    """Validate a decoded JSON object into a :class:`ScoreRequest` (errors name the field)."""
    if type(obj) is not dict:
        raise RequestError("body", f"must be a JSON object, got {type(obj).__name__}")
    rid = obj.get("request_id")
    rid = new_request_id() if rid is None else _check_id(rid, "request_id")
    user = obj.get("user")
    if user is None:
        user = {}
    elif type(user) is not dict:
        raise RequestError("user", f"must be an object of feature -> value, got {brief(user)}")
    uid = obj.get("user_id", user.get("user_id"))
    if uid is not None:
        _check_id(uid, "user_id")
    cands = obj.get("candidates")
    ids = obj.get("candidate_ids")
    if ids is not None:
        return _by_id(obj, ids, cands, rid, user, uid, max_candidates)
    if cands is None:
        raise RequestError("candidates", "missing (a list of {\"item_id\": ...} objects, or "
                                         "candidate_ids: a list of item ids)")
    if type(cands) is not list:
        raise RequestError("candidates", f"must be a list of objects, got {brief(cands)}")
    if len(cands) > max_candidates:
        raise RequestError("candidates", f"too many ({len(cands)} > {max_candidates})")
    for c in cands:  # the common case checked inline; the first odd one takes the slow path
        if type(c) is not dict or type(c.get("item_id")) not in _IDS or "features" in c:
            cands = [candidate(c, f"candidates[{i}]") for i, c in enumerate(cands)]
            break
    return ScoreRequest(request_id=rid, user=user, candidates=cands, user_id=uid,
                        now=_now(obj))


def _now(obj: dict[str, Any]) -> float | None:
    """The request's event time: seconds within :data:`MAX_CLOCK_SKEW_S` of the server's
    wall clock (it becomes the impressions' timestamp, training data)."""
    now = obj.get("now")
    if now is None:
        return None
    if isinstance(now, bool) or not isinstance(now, int | float):
        raise RequestError("now", f"must be a number of seconds, got {brief(now)}")
    wall = time.time()
    if not abs(now - wall) <= MAX_CLOCK_SKEW_S:
        raise RequestError("now", f"must be within {MAX_CLOCK_SKEW_S:.0f} s of the server's "
                                  f"clock ({wall:.0f}), got {brief(now)}")
    return float(now)


def _by_id(obj: dict[str, Any], ids: Any, cands: Any, rid: str | int, user: dict[str, Any],
           uid: str | int | None, max_candidates: int) -> ScoreRequest:
    """A request naming its candidates by id (``candidate_ids``)."""
    if cands is not None:
        raise RequestError("candidate_ids", "give either candidates or candidate_ids, not both")
    if type(ids) is not list:
        raise RequestError("candidate_ids", f"must be a list of item ids, got {brief(ids)}")
    if len(ids) > max_candidates:
        raise RequestError("candidate_ids", f"too many ({len(ids)} > {max_candidates})")
    for i, v in enumerate(ids):
        if type(v) is not int and type(v) is not str:
            _check_id(v, f"candidate_ids[{i}]")
    return ScoreRequest(request_id=rid, user=user, candidates=[{"item_id": v} for v in ids],
                        user_id=uid, now=_now(obj), by_id=True)


def parse_request(body: bytes, max_candidates: int = 1000) -> ScoreRequest:
    """Decode and validate a JSON request body (see the module docstring).

    Raises
    ------
    RequestError
        Not JSON, or a field of the wrong type (the message names it), or too many candidates.
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError("body", f"not valid JSON ({e})") from e
    return build_request(obj, max_candidates)


def parse_v2_request(body: bytes, max_candidates: int = 1000,
                     datatypes: Mapping[str, str] | None = None) -> ScoreRequest:
    """Decode a KServe v2 inference request into a :class:`ScoreRequest`.

    Inputs are named after the joined-example columns: ``item_id`` and ``i_<feature>`` (and
    ``position``, ignored) hold one value per candidate (shape ``[N]``; a list feature
    ``[N, L]``); ``user_id`` and ``u_<feature>`` hold the user's value (shape ``[1]``, or
    ``[1, L]`` for a list). ``parameters`` may carry ``request_id`` and ``now``; the
    request's ``id`` is used as the request id when given. Each input's ``datatype`` must
    be a protocol datatype that its data holds (``INT64``: ints, ``BYTES``: strings,
    ``FP32``: numbers, ...; ``null`` stands for a missing value), and the requested
    ``outputs``, when given, must name only ``scores``.

    ``datatypes`` (the model metadata's, :func:`~freshrec.serve.v2.input_datatypes`) names
    every input the model takes and its advertised datatype; when given, another input is
    refused and each input's datatype must carry what is advertised: an ``INT64`` id any
    integer datatype, or ``BYTES`` holding integers in decimal (``"7"``: the id 7, the same
    fid); a ``BYTES`` (string) id ``BYTES`` or an integer datatype (7 is the id ``"7"``); an
    ``FP32`` dense value any number datatype.

    Examples
    --------
    >>> body = orjson.dumps({"id": "q1", "inputs": [
    ...     {"name": "item_id", "shape": [2], "datatype": "INT64", "data": [7, 8]},
    ...     {"name": "u_age", "shape": [1], "datatype": "INT64", "data": [30]}]})
    >>> r = parse_v2_request(body)
    >>> r.request_id, r.user, r.candidates
    ('q1', {'age': 30}, [{'item_id': 7}, {'item_id': 8}])
    >>> parse_v2_request(orjson.dumps({"inputs": [
    ...     {"name": "item_id", "shape": [1], "datatype": "INT64", "data": ["7"]}]}))
    Traceback (most recent call last):
    ...
    freshrec.serve.request.RequestError: inputs[0].data: input 'item_id': datatype INT64 needs integers in [-9223372036854775808, 9223372036854775807], got '7'
    >>> parse_v2_request(orjson.dumps({"inputs": [
    ...     {"name": "item_id", "shape": [1], "datatype": "BYTES", "data": ["Comedy"]}]}),
    ...     datatypes={"item_id": "INT64"})
    Traceback (most recent call last):
    ...
    freshrec.serve.request.RequestError: inputs[0].data: input 'item_id' takes INT64 ids (model metadata); as BYTES only integers in decimal, got 'Comedy'
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError("body", f"not valid JSON ({e})") from e
    return build_v2_request(obj, max_candidates, datatypes)


def build_v2_request(obj: Any, max_candidates: int,
                     datatypes: Mapping[str, str] | None = None) -> ScoreRequest:
    """Validate a decoded KServe v2 inference request (see :func:`parse_v2_request`)."""
    if type(obj) is not dict:
        raise RequestError("body", f"must be a JSON object, got {type(obj).__name__}")
    inputs = obj.get("inputs")
    if type(inputs) is not list or not inputs:
        raise RequestError("inputs", "must be a non-empty list of tensors")
    params = obj.get("parameters") or {}
    if type(params) is not dict:
        raise RequestError("parameters", "must be an object")
    binary = _check_outputs(obj.get("outputs"), params.get("binary_data_output") is True)
    user: dict[str, Any] = {}
    cand_cols: dict[str, list[Any]] = {}
    user_id = None
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        if type(t) is not dict or type(t.get("name")) is not str:
            raise RequestError(f"{where}.name", "every input needs a string name")
        name, data, shape = t["name"], t.get("data"), t.get("shape")
        if type(data) is not list:
            raise RequestError(f"{where}.data", f"input {brief(name)}: must be a list")
        if type(shape) is not list or not all(type(s) is int and s >= 0 for s in shape):
            raise RequestError(f"{where}.shape", f"input {brief(name)}: must be a list of ints")
        _check_datatype(t.get("datatype"), data, name, where)
        if datatypes is not None and name != "position":
            _check_advertised(datatypes, t["datatype"], data, name, where)
        rows = _unflatten(data, shape, f"{where}.data")
        if name == "user_id" or name.startswith("u_"):
            if len(rows) != 1:
                raise RequestError(f"{where}.shape", f"user input {brief(name)} must have 1 row, "
                                   f"got {len(rows)}")
            if name == "user_id":
                user_id = rows[0]
            else:
                user[name[2:]] = rows[0]
        elif name == "position":
            continue
        elif name == "item_id" or name.startswith("i_"):
            cand_cols["item_id" if name == "item_id" else name[2:]] = rows
        else:
            raise RequestError(f"{where}.name", f"unknown input {brief(name)} (expected item_id, "
                               f"user_id, i_<feature> or u_<feature>)")
    if "item_id" not in cand_cols:
        raise RequestError("inputs", "no 'item_id' input (one value per candidate)")
    n = len(cand_cols["item_id"])
    for name, rows in cand_cols.items():
        if len(rows) != n:
            raise RequestError("inputs", f"input {brief(name)} has {len(rows)} rows, item_id {n}")
    keys = list(cand_cols)
    cols = [cand_cols[k] for k in keys]
    cands = [dict(zip(keys, vals, strict=True)) for vals in zip(*cols, strict=True)]
    req_obj = {"request_id": obj.get("id", params.get("request_id")), "user": user,
               "candidates": cands, "now": params.get("now")}
    if user_id is not None:
        req_obj["user_id"] = user_id
    req = build_request(req_obj, max_candidates)
    req.binary_output = binary
    return req


#: The one output of a model (``outputs`` of a request may name only it).
V2_OUTPUT = "scores"
_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


def _int_type(bits: int, signed: bool) -> tuple[str, Any]:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return f"integers in [{lo}, {hi}]", lambda v: type(v) is int and lo <= v <= hi


def _float_type(bits: int, mantissa: int) -> tuple[str, Any]:
    """Numbers that round to a finite float of ``bits`` with ``mantissa`` stored bits: below
    ``2**E * (1 - 2**-(mantissa + 2))`` (``E = 2**(exponent bits - 1)``), from where rounding
    goes to infinity (65520 for FP16, about 3.4028236e38 for FP32)."""
    e = 1 << (bits - mantissa - 2)
    end = (1 << e) - (1 << (e - mantissa - 2))  # an exact int: FP64's is past float range
    return (f"numbers that are finite as FP{bits}",
            lambda v: (type(v) is int or type(v) is float) and abs(v) < end)


#: Datatype -> (what its values are, a test of one value); ``None`` always passes. A value
#: must fit its datatype (an FP32 input holding 1e39, an INT8 holding 300 are refused).
_DATATYPES: dict[str, tuple[str, Any]] = {
    **{d: _int_type(int(d.lstrip("UINT")), not d.startswith("U")) for d in _INTS},
    "FP16": _float_type(16, 10),
    "FP32": _float_type(32, 23),
    "FP64": _float_type(64, 52),
    "BOOL": ("booleans", lambda v: type(v) is bool),
    "BYTES": ("strings", lambda v: type(v) is str),
}


def _check_datatype(datatype: Any, data: list[Any], name: str, where: str) -> None:
    """Refuse an input whose ``datatype`` is not a protocol datatype or does not fit its data
    (flat or nested one level; ``null`` stands for a missing value)."""
    spec = _DATATYPES.get(datatype) if type(datatype) is str else None
    if spec is None:
        raise RequestError(f"{where}.datatype", f"input {brief(name)}: must be one of "
                           f"{', '.join(_DATATYPES)}, got {brief(datatype)}")
    what, ok = spec
    for v in data:
        for x in v if type(v) is list else (v,):
            if x is not None and not ok(x):
                raise RequestError(f"{where}.data", f"input {brief(name)}: datatype "
                                   f"{datatype} needs {what}, got {brief(x)}")


#: Advertised datatype -> the datatypes a request may send for it (ids hash by value,
#: :mod:`freshrec.features.hashing`: any integer type carries an INT64 id, and an integer n
#: is the string id ``str(n)``; a dense value is any number).
_CARRIES: dict[str, frozenset[str]] = {
    "INT64": frozenset([*_INTS, "BYTES"]),
    "BYTES": frozenset([*_INTS, "BYTES"]),
    "FP32": frozenset([*_INTS, "FP16", "FP32", "FP64"]),
}


def _check_advertised(datatypes: Mapping[str, str], datatype: str, data: list[Any], name: str,
                      where: str) -> None:
    """Refuse an input the model does not take, or a datatype that does not carry what the
    metadata advertises for it (a ``BYTES`` string for an ``INT64`` id must be an integer's
    decimal form: any other string would be an id no integer hashes to)."""
    want = datatypes.get(name)
    if want is None:
        raise RequestError(f"{where}.name", f"unknown input {brief(name)} (the model's inputs: "
                           f"{', '.join(datatypes)})")
    if datatype not in _CARRIES.get(want, (want,)):
        raise RequestError(f"{where}.datatype", f"input {brief(name)} is {want} (model "
                           f"metadata), got {datatype}")
    if want == "INT64" and datatype == "BYTES":
        for v in data:
            for x in v if type(v) is list else (v,):
                if x is not None and not _is_decimal_int(x):
                    raise RequestError(f"{where}.data", f"input {brief(name)} takes INT64 ids "
                                       f"(model metadata); as BYTES only integers in decimal, "
                                       f"got {brief(x)}")


def _is_decimal_int(s: str) -> bool:
    """Whether ``s`` is what ``str(n)`` gives for an id ``n`` of 64 bits (the strings the
    hashing rule reads as that integer).

    >>> [_is_decimal_int(s) for s in ["7", "-7", "007", " 7", "+7", "1_0", "--7", "-0", "x"]]
    [True, True, False, False, False, False, False, False, False]
    """
    digits = s[1:] if s.startswith("-") else s
    if not (digits.isascii() and digits.isdigit()) or len(s) > 21:
        return False
    n = int(s)
    return str(n) == s and -(1 << 63) <= n < 1 << 64


def _check_outputs(outputs: Any, binary: bool) -> bool:
    """Refuse requested ``outputs`` other than :data:`V2_OUTPUT`; returns whether the scores
    go out as binary data (an output's ``binary_data`` overrides the request's ``binary``)."""
    if outputs is None:
        return binary
    if type(outputs) is not list:
        raise RequestError("outputs", f"must be a list of {{\"name\": ...}}, got "
                                      f"{brief(outputs)}")
    for i, o in enumerate(outputs):
        name = o.get("name") if type(o) is dict else None
        if name != V2_OUTPUT:
            raise RequestError(f"outputs[{i}].name", f"unknown output {brief(name)} (this "
                               f"model has one output, {V2_OUTPUT!r})")
        p = o.get("parameters")
        if type(p) is dict and type(p.get("binary_data")) is bool:
            binary = p["binary_data"]
    return binary


def _unflatten(data: list[Any], shape: list[int], where: str) -> list[Any]:
    """Rows of a row-major tensor: ``shape [N]`` -> N scalars, ``[N, L]`` -> N lists."""
    if len(shape) == 1:
        if len(data) != shape[0]:
            raise RequestError(where, f"holds {len(data)} values, shape says {shape[0]}")
        if data and type(data[0]) is list:  # already nested
            return data
        return data
    if len(shape) == 2:
        n, m = shape
        if data and type(data[0]) is list:
            if len(data) != n:
                raise RequestError(where, f"holds {len(data)} rows, shape says {n}")
            return data
        if len(data) != n * m:
            raise RequestError(where, f"holds {len(data)} values, shape says {n} x {m}")
        return [data[r * m:(r + 1) * m] for r in range(n)]
    raise RequestError(where, f"tensors of rank 1 or 2 only, got shape {shape}")
