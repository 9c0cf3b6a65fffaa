"""Item catalogue and candidates named by id: same scores as the full features, bad lines
reported with file and line, over a real server too."""

from __future__ import annotations

import time

import httpx
import numpy as np
import orjson
import pytest

from freshrec.errors import InputError
from freshrec.serve import Predictor, ServeConfig, Server
from freshrec.serve.catalogue import load_catalogue
from freshrec.serve.request import RequestError, build_request, parse_request
from freshrec.stream import FileLog
from freshrec.stream.events import decode
from freshrec.sync import Registry, Subscriber
from tests.serve._helpers import make_config, reference_scores, train_and_publish


def item(i: int) -> dict:
    return {"item_id": i, "cat": str(i % 5), "tags": [i % 3], "price": float(i % 7)}


def write_items(path, ids, extra_lines=()):
    lines = [orjson.dumps(item(i)).decode() for i in ids] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def published(tmp_path):
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    return cfg, reg


def test_candidate_ids_score_like_the_full_features(tmp_path, published):
    cfg, reg = published
    state = Subscriber(reg).materialize()
    pred = Predictor.build(cfg, tables=state.tables, dense=state.dense)
    stats = load_catalogue(pred.index, write_items(tmp_path / "items.jsonl", range(50)))
    assert (stats.loaded, stats.rejected) == (50, 0)
    ids = [3, 77, 12, 3, 49, 0]  # 77: not in the catalogue, scored with its id alone
    full = {"user_id": 4, "user": {"gender": 1, "age": 30},
            "candidates": [item(i) if i < 50 else {"item_id": i} for i in ids]}
    got = pred.score(build_request({"user_id": 4, "user": {"gender": 1, "age": 30},
                                    "candidate_ids": ids}, 100))
    np.testing.assert_allclose(got, reference_scores(cfg, reg, full), rtol=1e-5, atol=1e-6)
    # a request with other features for an item replaces them in the index: by id follows
    changed = {**item(3), "cat": "4"}
    pred.score(build_request({"candidates": [changed]}, 100))
    req = build_request({"candidate_ids": [3]}, 100)
    pred.score(req)
    assert req.candidates == [changed]


def test_catalogue_reports_bad_lines_with_file_and_line_and_loads_the_rest(tmp_path,
                                                                          published):
    cfg, _ = published
    pred = Predictor.build(cfg)
    path = write_items(tmp_path / "items.jsonl", [1, 2], extra_lines=[
        '{"item_id": 3, "price": "cheap"}', "", "{not json", '{"cat": "1"}', "[1, 2]",
        orjson.dumps(item(4)).decode()])
    stats = load_catalogue(pred.index, path, chunk=2)
    assert (stats.loaded, stats.rejected) == (3, 4)
    errors = sorted(stats.errors, key=lambda e: int(e[len(str(path)) + 1:].split(":")[0]))
    assert errors[0] == f"{path}:3: price: must be a number (a dense feature), got 'cheap'"
    assert errors[1].startswith(f"{path}:5: not valid JSON")
    assert errors[2] == f"{path}:6: item_id: missing (each candidate needs one)"
    assert errors[3] == f"{path}:7: candidate: must be an object, got [1, 2]"
    assert pred.index.known([{"item_id": 4}, {"item_id": 3}]) == [item(4), {"item_id": 3}]
    with pytest.raises(InputError, match="nowhere.jsonl: cannot read"):
        load_catalogue(pred.index, tmp_path / "nowhere.jsonl")


@pytest.mark.parametrize("body, field", [
    ({"candidate_ids": 5}, "candidate_ids"),
    ({"candidate_ids": [1, True]}, "candidate_ids[1]"),
    ({"candidate_ids": [1, 2.5]}, "candidate_ids[1]"),
    ({"candidate_ids": [1], "candidates": [{"item_id": 1}]}, "candidate_ids"),
    ({"candidate_ids": list(range(11))}, "candidate_ids"),
])
def test_bad_candidate_ids_name_the_field(body, field):
    with pytest.raises(RequestError) as e:
        parse_request(orjson.dumps(body), max_candidates=10)
    assert e.value.field == field


def test_server_with_catalogue_serves_candidate_ids(tmp_path, published):
    cfg, reg = published
    path = write_items(tmp_path / "items.jsonl", range(40), extra_lines=['{"cat": 1}'])
    log = FileLog(tmp_path / "log")
    server = Server(reg, ServeConfig(port=0, items_path=str(path), poll_interval_s=0.05),
                    log=log)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ready = client.get("/readyz").json()
            assert ready["catalogue"]["loaded"] == 40 and ready["catalogue"]["rejected"] == 1
            ids = [5, 39, 7]
            r = client.post("/score", json={"request_id": "by-id", "user_id": 2, "user": {},
                                            "candidate_ids": ids, "now": time.time()})
            assert r.status_code == 200, r.text
            full = {"user_id": 2, "user": {}, "candidates": [item(i) for i in ids]}
            np.testing.assert_allclose(r.json()["scores"], reference_scores(cfg, reg, full),
                                       rtol=1e-5, atol=1e-6)
            bad = client.post("/score", json={"candidate_ids": [1, None]})
            assert bad.status_code == 400 and bad.json()["field"] == "candidate_ids[1]"
        server.impressions.close()
        events = [decode(x.value) for x in log.read(0, 0, max_records=10)]
        assert [e["request_id"] for e in events] == ["by-id"]
        assert [c["features"] for c in events[0]["candidates"]] == [
            {k: v for k, v in item(i).items() if k != "item_id"} for i in ids]
    finally:
        server.stop()
        log.close()
