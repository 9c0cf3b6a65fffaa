"""Per-slot value types in the Open Inference Protocol: a ``string`` slot is advertised as
``BYTES``, a real client (tritonclient) sends its strings as ``BYTES`` from the metadata alone
and gets the scores of ``POST /score`` and of the training code path; every input is checked
against its advertised datatype (400 naming the input)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
import tritonclient.http as tc

from freshrec.config import FreshrecConfig, config_from_dict
from freshrec.serve import ServeConfig, Server
from freshrec.sync import Publisher, Registry
from freshrec.train.trainer import Trainer
from tests.serve._helpers import examples, make_config, reference_scores
from tests.serve.test_v2 import _full_body
from tests.serve.test_v2_client import triton_inputs

GENRES = ["Comedy", "Drama", "Film-Noir", "Sci-Fi", "Kinder & Familie", "007"]
CITIES = ["Zürich", "Lyon", "São Paulo", "3"]


def _config() -> FreshrecConfig:
    raw = make_config().raw
    slots = {**raw["features"]["slots"], "i_genre": {"table": "item", "dtype": "string"},
             "u_city": {"table": "user", "dtype": "string"}}
    return config_from_dict({**raw, "features": {**raw["features"], "slots": slots}},
                            where="tests/serve/test_v2_datatypes")


def _examples(seed: int, n: int) -> pa.RecordBatch:
    """The serving tests' examples with a genre per item and a city per user: strings,
    one of them ("007") a decimal that is not an integer's canonical form."""
    rb = examples(np.random.default_rng(seed), n)
    items = rb.column("item_id").to_numpy()
    users = rb.column("user_id").to_numpy()
    rb = rb.append_column("i_genre", pa.array([GENRES[i % len(GENRES)] for i in items]))
    return rb.append_column("u_city", pa.array([CITIES[u % len(CITIES)] for u in users]))


@pytest.fixture
def served_strings(tmp_path: Path) -> Iterator[tuple[Server, httpx.Client, Any, Registry]]:
    cfg = _config()
    reg = Registry(tmp_path / "reg")
    trainer = Trainer(cfg)
    trainer.fit([_examples(0, 1024)])
    Publisher(reg, trainer.tables, trainer.model.state_dict).publish_full(
        event_time=1024, meta={"config": dict(cfg.raw)})
    server = Server(reg, ServeConfig(port=0, poll_interval_s=0.05), log=False)
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield server, client, cfg, reg
    server.stop()


def _body(seed: int) -> dict[str, Any]:
    body = _full_body(seed)
    body["user"]["city"] = CITIES[body["user_id"] % len(CITIES)]
    for c in body["candidates"]:
        c["genre"] = GENRES[c["item_id"] % len(GENRES)]
    return body


def test_string_slots_are_advertised_as_bytes(served_strings):
    _, client, _, _ = served_strings
    meta = client.get("/v2/models/freshrec").json()
    types = {t["name"]: t["datatype"] for t in meta["inputs"]}
    assert types.pop("i_genre") == "BYTES" and types.pop("u_city") == "BYTES"
    assert types == {"user_id": "INT64", "u_gender": "INT64", "u_recent": "INT64",
                     "item_id": "INT64", "i_cat": "INT64", "i_tags": "INT64", "u_age": "FP32",
                     "i_price": "FP32"}


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_sends_strings_as_bytes_and_scores_as_training(served_strings, binary):
    server, client, cfg, reg = served_strings
    triton = tc.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        meta = triton.get_model_metadata("freshrec")
        body = _body(7)
        inputs = triton_inputs(meta, body, binary)
        out = [tc.InferRequestedOutput("scores", binary_data=binary)]
        scores = triton.infer("freshrec", inputs, outputs=out).as_numpy("scores")
    finally:
        triton.close()
    plain = client.post("/score", json=body).json()["scores"]
    np.testing.assert_allclose(scores, plain, rtol=1e-6)
    # the training code path (FeatureSchema over Arrow string columns) gives the same scores
    np.testing.assert_allclose(scores, reference_scores(cfg, reg, body), rtol=1e-5, atol=1e-6)
    # and the strings matter: another genre per candidate moves the scores
    other = {**body, "candidates": [{**c, "genre": "Western"} for c in body["candidates"]]}
    assert not np.allclose(client.post("/score", json=other).json()["scores"], plain)


_ITEM = {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [1]}


@pytest.mark.parametrize("tensor, field, says", [
    ({"name": "item_id", "shape": [1], "datatype": "BYTES", "data": ["Comedy"]},
     "inputs[0].data", "'item_id' takes INT64 ids"),
    ({"name": "item_id", "shape": [1], "datatype": "BYTES", "data": ["007"]},
     "inputs[0].data", "'item_id' takes INT64 ids"),
    ({"name": "item_id", "shape": [1], "datatype": "FP32", "data": [1.0]},
     "inputs[0].datatype", "'item_id' is INT64"),
    ({"name": "item_id", "shape": [1], "datatype": "BOOL", "data": [True]},
     "inputs[0].datatype", "'item_id' is INT64"),
    ({"name": "i_genre", "shape": [1], "datatype": "FP32", "data": [1.5]},
     "inputs[0].datatype", "'i_genre' is BYTES"),
    ({"name": "u_age", "shape": [1], "datatype": "BYTES", "data": ["40"]},
     "inputs[0].datatype", "'u_age' is FP32"),
    ({"name": "i_junk", "shape": [1], "datatype": "INT64", "data": [1]},
     "inputs[0].name", "unknown input 'i_junk'"),
])
def test_inputs_are_checked_against_the_metadata(served_strings, tensor, field, says):
    _, client, _, _ = served_strings
    inputs = [tensor] if tensor["name"] == "item_id" else [tensor, _ITEM]
    r = client.post("/v2/models/freshrec/infer", json={"inputs": inputs})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and says in r.json()["error"], r.text


def test_ids_in_other_datatypes_score_as_advertised(served_strings):
    """Ids hash by value: an INT64 id sent as UINT8 or as its decimal BYTES, and a string
    slot's decimal string sent as INT64, are the same ids (the same scores); "007" is not 7."""
    _, client, _, _ = served_strings

    def infer(item: dict[str, Any], genre: dict[str, Any]) -> list[float]:
        r = client.post("/v2/models/freshrec/infer", json={"inputs": [item, genre]})
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]["data"]

    item = {"name": "item_id", "shape": [2], "datatype": "INT64", "data": [5, 12]}
    genre = {"name": "i_genre", "shape": [2], "datatype": "BYTES", "data": ["007", "3"]}
    want = infer(item, genre)
    assert infer({**item, "datatype": "UINT8"}, genre) == want
    assert infer({**item, "datatype": "BYTES", "data": ["5", "12"]}, genre) == want
    three = {**genre, "shape": [1], "data": ["3"]}
    one = {**item, "shape": [1], "data": [12]}
    assert infer(one, {**three, "datatype": "INT64", "data": [3]}) == infer(one, three)
    assert infer(one, {**three, "data": ["007"]}) != infer(one, {**three, "datatype": "INT64",
                                                                "data": [7]})
