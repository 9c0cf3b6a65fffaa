"""Open Inference Protocol conformance against a real server on loopback: a client that
knows only the protocol drives the server from its metadata, and every error is JSON."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest

from tests.serve._helpers import request

_CASTS = {"INT64": int, "FP32": float, "BYTES": str}


def _value(body: dict[str, Any], name: str, cand: dict[str, Any] | None) -> Any:
    """The value of input ``name`` in a ``/score`` body (of candidate ``cand``)."""
    if name in ("user_id", "item_id"):
        return body[name] if cand is None else cand[name]
    return (body["user"] if cand is None else cand)[name[2:]]


def _tensor(spec: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The input ``spec`` (from the metadata) of ``body``: ``-1`` dims become the data's, the
    data is flattened row-major and cast to the declared datatype."""
    shape = list(spec["shape"])
    rows = ([_value(body, spec["name"], None)] if shape[0] == 1 else
            [_value(body, spec["name"], c) for c in body["candidates"]])
    cast = _CASTS[spec["datatype"]]
    if len(shape) == 2:
        width = {len(r) for r in rows}
        assert len(width) == 1, "the test body's lists are rectangular"
        data = [cast(x) for r in rows for x in r]
        shape = [len(rows), width.pop()]
    else:
        data, shape = [cast(x) for x in rows], [len(rows)]
    return {"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": data}


def _full_body(seed: int) -> dict[str, Any]:
    """A ``/score`` body with every feature of every candidate present (rectangular lists)."""
    body = request(np.random.default_rng(seed), n=6)
    for j, c in enumerate(body["candidates"]):
        c["tags"], c["price"] = [c["item_id"] % 3, 7], float(j) + 0.5
    return body


def test_server_metadata_and_health(served):
    _, client, _, _, _ = served
    meta = client.get("/v2")
    assert meta.status_code == 200 and meta.json()["name"] == "freshrec"
    assert {"version", "extensions"} <= set(meta.json())
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_metadata_states_each_input(served):
    _, client, _, _, _ = served
    meta = client.get("/v2/models/freshrec").json()
    assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]} == {
        "user_id": ("INT64", [1]), "u_gender": ("INT64", [1]), "u_recent": ("INT64", [1, -1]),
        "item_id": ("INT64", [-1]), "i_cat": ("INT64", [-1]), "i_tags": ("INT64", [-1, -1]),
        "u_age": ("FP32", [1]), "i_price": ("FP32", [-1])}
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1]}]


def test_a_client_built_from_metadata_alone_scores_as_score(served):
    _, client, _, _, _ = served
    meta = client.get("/v2/models/freshrec").json()
    version = meta["versions"][0]
    base = f"/v2/models/{meta['name']}/versions/{version}"
    assert client.get(base).json()["inputs"] == meta["inputs"]
    assert client.get(f"{base}/ready").status_code == 200
    body = _full_body(3)
    v2 = {"id": "m1", "inputs": [_tensor(t, body) for t in meta["inputs"]],
          "outputs": [{"name": o["name"]} for o in meta["outputs"]]}
    r = client.post(f"{base}/infer", json=v2)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == version and out["outputs"][0]["name"] == "scores"
    plain = client.post("/score", json=body).json()["scores"]
    np.testing.assert_allclose(out["outputs"][0]["data"], plain, rtol=1e-6)


def _binary(t: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Input ``t`` with its data moved to the binary data extension's bytes."""
    data = t["data"]
    if t["datatype"] == "BYTES":
        raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in data)
    else:
        raw = np.array(data, {"INT64": "<i8", "FP32": "<f4"}[t["datatype"]]).tobytes()
    head = {k: v for k, v in t.items() if k != "data"}
    return {**head, "parameters": {"binary_data_size": len(raw)}}, raw


def test_binary_inputs_score_as_json_inputs(served):
    _, client, _, _, _ = served
    meta = client.get("/v2/models/freshrec").json()
    body = _full_body(5)
    parts = [_binary(_tensor(t, body)) for t in meta["inputs"]]
    head = orjson.dumps({"id": "b1", "inputs": [h for h, _ in parts]})
    r = client.post("/v2/models/freshrec/infer", content=head + b"".join(raw for _, raw in parts),
                    headers={"Inference-Header-Content-Length": str(len(head)),
                             "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    plain = client.post("/score", json=body).json()["scores"]
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], plain, rtol=1e-6)
    bad = client.post("/v2/models/freshrec/infer", content=head,
                      headers={"Inference-Header-Content-Length": "x"})
    assert bad.status_code == 400 and "Inference-Header-Content-Length" in bad.json()["error"]
    short = client.post("/v2/models/freshrec/infer", content=head + b"\0",
                        headers={"Inference-Header-Content-Length": str(len(head))})
    assert short.status_code == 400 and "binary_data_size" in short.json()["field"]


_ITEM = {"name": "item_id", "shape": [2], "datatype": "INT64", "data": [1, 2]}


@pytest.mark.parametrize("method, path, payload, status, names", [
    ("GET", "/nowhere", None, 404, "/nowhere"),
    ("GET", "/v2/models/other", None, 404, "'other'"),
    ("GET", "/v2/models/freshrec/versions/999", None, 404, "'999'"),
    ("GET", "/v2/models/freshrec/versions/999/ready", None, 404, "'999'"),
    ("POST", "/v2/models/freshrec/versions/999/infer", {"inputs": [_ITEM]}, 404, "'999'"),
    ("GET", "/v2/models/freshrec/infer", None, 405, "/v2/models/freshrec/infer"),
    ("POST", "/v2/models/freshrec/infer",
     {"inputs": [{**_ITEM, "datatype": "BOGUS"}]}, 400, "'item_id'"),
    ("POST", "/v2/models/freshrec/infer",
     {"inputs": [{**_ITEM, "data": ["a", "b"]}]}, 400, "'item_id'"),
    ("POST", "/v2/models/freshrec/infer",
     {"inputs": [_ITEM, {"name": "u_age", "shape": [1], "datatype": "FP32", "data": ["x"]}]},
     400, "'u_age'"),
    ("POST", "/v2/models/freshrec/infer",
     {"inputs": [_ITEM], "outputs": [{"name": "logits"}]}, 400, "'logits'"),
])
def test_every_error_is_a_json_object_naming_the_offender(served, method, path, payload,
                                                           status, names):
    _, client, _, _, _ = served
    r = client.request(method, path, json=payload)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert names in r.json()["error"]
