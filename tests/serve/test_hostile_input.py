"""Hostile input against a real server on loopback: every case is a 4xx naming the field,
never a 500 or a non-finite score, and nothing a request adds beyond the model's features
reaches the feature index or the impressions."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.serve.predictor import FeatureIndex, FeatureLayout
from freshrec.serve.request import MAX_CLOCK_SKEW_S
from tests.serve._helpers import make_config

JSON = {"content-type": "application/json"}


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def _post(client: Any, body: bytes, path: str = "/score") -> Any:
    return client.post(path, content=body, headers=JSON)


@pytest.mark.parametrize("body, field", [
    (b'{"user": {"gender": ' + _deep(1000) + b'}, "candidates": [{"item_id": 1}]}',
     "user.gender"),
    (b'{"candidates": [{"item_id": 1, "cat": ' + _deep(1000) + b"}]}", "candidates[0].cat"),
    (b'{"candidates": [{"item_id": ' + _deep(1000) + b"}]}", "candidates[0].item_id"),
    (b'{"user": {"age": 1e308}, "candidates": [{"item_id": 1}]}', "user.age"),
    (b'{"user": {"age": -1e40}, "candidates": [{"item_id": 1}]}', "user.age"),
    (b'{"candidates": [{"item_id": 1, "price": "3.5"}]}', "candidates[0].price"),
    (b'{"user": {"age": true}, "candidates": [{"item_id": 1}]}', "user.age"),
    (b'{"now": 1e308, "candidates": [{"item_id": 1}]}', "now"),
    (b'{"now": -1e308, "candidates": [{"item_id": 1}]}', "now"),
    (b'{"now": "2026-01-01", "candidates": [{"item_id": 1}]}', "now"),
])
def test_hostile_values_get_400_naming_the_field(served, body, field):
    _, client, _, _, _ = served
    r = _post(client, body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and len(r.text) < 1000, r.text


def test_v2_fp32_overflow_gets_400_naming_the_input(served):
    """An FP32 input holding 1e39 (past float32) is refused as not FP32; ``u_age`` is
    standardised (std 10): FP64 1e308 overflows float32 there. ``i_price`` is log-normalised:
    1e308 is log1p(1e308) = 709.8, a finite score."""
    _, client, _, _, _ = served
    item = {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [1]}
    for datatype, value, field in [("FP32", 1e39, "inputs[1].data"),
                                   ("FP64", 1e308, "user.age")]:
        v2 = {"inputs": [item, {"name": "u_age", "shape": [1], "datatype": datatype,
                                "data": [value]}]}
        r = client.post("/v2/models/freshrec/infer", json=v2)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    v2 = {"inputs": [item, {"name": "i_price", "shape": [1], "datatype": "FP64",
                            "data": [1e308]}]}
    r = client.post("/v2/models/freshrec/infer", json=v2)
    assert r.status_code == 200 and math.isfinite(r.json()["outputs"][0]["data"][0]), r.text


_V2_ITEM = b'{"name": "item_id", "shape": [1], "datatype": "INT64", "data": [1]}'


def _v2(*inputs: bytes, params: bytes = b"{}") -> bytes:
    return b'{"inputs": [' + b", ".join(inputs) + b'], "parameters": ' + params + b"}"


@pytest.mark.parametrize("body, field", [
    (_v2(b'{"name": "item_id", "shape": [1], "datatype": "INT64", "data": [' + _deep(1000)
         + b"]}"), "inputs[0].data"),
    (_v2(_V2_ITEM, b'{"name": "u_gender", "shape": [1], "datatype": "INT64", "data": '
         + _deep(1000) + b"}"), "inputs[1].data"),
    (_v2(_V2_ITEM, b'{"name": "i_cat", "shape": ' + _deep(1000)
         + b', "datatype": "INT64", "data": [1]}'), "inputs[1].shape"),
    (_v2(_V2_ITEM, params=b'{"now": ' + _deep(1000) + b"}"), "now"),
    (_v2(_V2_ITEM, params=b'{"now": 1e308}'), "now"),
    (_v2(_V2_ITEM, b'{"name": "u_age", "shape": [1], "datatype": "FP32", "data": [1e39]}'),
     "inputs[1].data"),
    (_v2(_V2_ITEM, b'{"name": "u_gender", "shape": [1], "datatype": "INT8", "data": [300]}'),
     "inputs[1].data"),
    (_v2(_V2_ITEM, b'{"name": "u_age", "shape": [1], "datatype": "FP64", "data": [-1e308]}'),
     "user.age"),
    (_v2(_V2_ITEM, b'{"name": "i_price", "shape": [1], "datatype": "BYTES", "data": ["3.5"]}'),
     "inputs[1].datatype"),
    (_v2(_V2_ITEM, b'{"name": "i_junk", "shape": [1], "datatype": "BYTES", "data": ["x"]}'),
     "inputs[1].name"),
])
def test_hostile_v2_values_get_400_naming_the_input(served, body, field):
    """The same hostile values through the KServe v2 route: nested 1,000 deep (data, shape,
    parameters), out of range (``now``; FP32 1e39 is no float32, an INT8 300 no INT8; FP64
    -1e308 overflows float32 in the standardised ``u_age``), a dense value as a string, an
    input the model does not take."""
    _, client, _, _, _ = served
    r = _post(client, body, "/v2/models/freshrec/infer")
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and len(r.text) < 1000, r.text


def test_now_is_within_a_day_of_the_server_clock(served):
    _, client, _, _, _ = served
    wall = time.time()
    for now, status in [(wall, 200), (wall - MAX_CLOCK_SKEW_S + 60, 200),
                        (wall + MAX_CLOCK_SKEW_S + 60, 400), (wall - 2 * MAX_CLOCK_SKEW_S, 400),
                        (0, 400)]:
        r = client.post("/score", json={"now": now, "candidates": [{"item_id": 1}]})
        assert r.status_code == status, (now, r.text)
        if status == 400:
            assert r.json()["field"] == "now"


@pytest.mark.parametrize("path", ["/score", "/v2/models/freshrec/infer"])
@pytest.mark.parametrize("content_type, status", [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415), (None, 415),
    ("application/json; charset=utf-8", 200), ("application/vnd.freshrec+json", 200)])
def test_scoring_routes_take_only_json(served, path, content_type, status):
    """A browser page's cross-site ``text/plain`` (or typeless) POST is refused unread; v2
    infer takes a typeless body as JSON (the protocol's clients send no Content-Type)."""
    _, client, _, _, _ = served
    if content_type is None and path != "/score":
        status = 200
    body = (b'{"candidates": [{"item_id": 1}]}' if path == "/score" else
            b'{"inputs": [{"name": "item_id", "shape": [1], "datatype": "INT64", "data": [1]}]}')
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == status, r.text
    if status == 415:
        assert r.json()["field"] == "Content-Type"


def test_unknown_fields_reach_neither_the_index_nor_the_impressions(served):
    server, client, _, _, log = served
    junk = "j" * 200  # 30 candidates within the fixture's 20 kB body limit
    for k in range(20):
        cands = [{"item_id": 10_000 + 30 * k + j, "cat": "1", "junk": junk,
                  "nested": {"deep": [[1]]}} for j in range(30)]
        r = client.post("/score", json={"user": {"gender": 1, "junk": junk}, "candidates": cands})
        assert r.status_code == 200, r.text
    index = server.updater.current.index
    assert len(index) >= 600 and index.nbytes < 400 * len(index)
    assert all("junk" not in c and "nested" not in c for c in index.known(
        [{"item_id": 10_000 + i} for i in range(600)]))
    server.impressions.close()
    written = b"".join(r.value for r in log.read(0, 0, max_records=1000))
    assert b"10599" in written and b"jjjj" not in written


def test_the_feature_index_is_bounded_in_bytes():
    index = FeatureIndex(FeatureLayout(make_config().features), max_bytes=100_000)
    for k in range(20):  # 20 x 10 items of ~3 kB each: 600 kB offered
        index.add([{"item_id": 10 * k + j, "cat": "c" * 3000} for j in range(10)])
        assert index.nbytes <= 100_000 + 10 * 3400
    assert len(index) < 200
    index.add([{"item_id": 999, "cat": "c", "title": "t" * 100}])  # a catalogue's unread field
    assert index.known([{"item_id": 999}]) == [{"item_id": 999, "cat": "c"}]


def _hostile_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([1e308, -1e308, 3.5e38, 1e39, 5e-324, 2**53 + 1]),
        st.text(max_size=20), st.text(min_size=2000, max_size=3000))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


_FIELDS = ["gender", "recent", "age", "cat", "tags", "price", "item_id", "junk"]


@st.composite
def _hostile_bodies(draw: st.DrawFn) -> bytes:
    """A scoring body with hostile values in any field, some nested ~1,000 deep."""
    user = draw(st.dictionaries(st.sampled_from(_FIELDS), _hostile_values(), max_size=4))
    cands = draw(st.lists(st.dictionaries(st.sampled_from(_FIELDS), _hostile_values(),
                                          max_size=5), max_size=4))
    for c in cands:
        if draw(st.booleans()):
            c["item_id"] = draw(st.integers(0, 100))
    body: dict[str, Any] = {"user": user, "candidates": cands}
    if draw(st.booleans()):
        body["now"] = draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                                     st.just(time.time()), _hostile_values()))
    if draw(st.booleans()):
        body["user_id"] = draw(_hostile_values())
    raw = orjson.dumps(body)
    if draw(st.booleans()):  # one value nested deeper than orjson writes
        raw = raw.replace(b"null", b'{"a":' + _deep(draw(st.integers(200, 1020))) + b"}", 1)
    return raw


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(body=_hostile_bodies())
def test_fuzzed_hostile_bodies_never_cost_a_500_or_a_non_finite_score(served, body):
    _, client, _, _, _ = served
    r = _post(client, body)
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        assert all(math.isfinite(s) for s in r.json()["scores"]), r.text
    else:
        assert r.json()["field"], r.text
    assert np.isfinite(_post(client, b'{"candidates": [{"item_id": 1}]}').json()["scores"]).all()


_INPUTS = ["item_id", "user_id", "u_gender", "u_recent", "u_age", "i_cat", "i_tags", "i_price",
           "position", "i_junk", "u_junk", "other"]


@st.composite
def _hostile_v2_bodies(draw: st.DrawFn) -> bytes:
    """A KServe v2 body: named inputs with hostile shapes, datatypes and data."""
    inputs = [{"name": draw(st.sampled_from(_INPUTS)),
               "shape": draw(st.one_of(st.lists(st.integers(-2, 4), max_size=3),
                                       _hostile_values())),
               "datatype": draw(st.sampled_from(["INT64", "FP32", "BYTES", "BOOL"])),
               "data": draw(st.one_of(st.lists(_hostile_values(), max_size=6),
                                      _hostile_values()))}
              for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        inputs.append({"name": "item_id", "shape": [2], "datatype": "INT64", "data": [1, 2]})
    body: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        body["parameters"] = draw(st.one_of(
            st.fixed_dictionaries({"now": _hostile_values()}), _hostile_values()))
    return orjson.dumps(body)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(body=_hostile_v2_bodies())
def test_fuzzed_v2_bodies_never_cost_a_500_or_a_non_finite_score(served, body):
    _, client, _, _, _ = served
    r = _post(client, body, "/v2/models/freshrec/infer")
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        assert all(math.isfinite(s) for s in r.json()["outputs"][0]["data"]), r.text
    else:
        assert r.json()["field"], r.text
