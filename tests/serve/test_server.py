"""HTTP API against a real server on loopback: contract, bad input, overload, impressions."""

from __future__ import annotations

import socket
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from freshrec.serve import ServeConfig, Server
from freshrec.stream.events import decode, validate_event
from freshrec.sync import Registry
from tests.serve._helpers import make_config, reference_scores, request, train_and_publish


def test_score_matches_training_path_and_reports_version(served):
    server, client, cfg, reg, _ = served
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["ready"] is True
    body = request(np.random.default_rng(3), n=20, rid="req-1")
    r = client.post("/score", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["request_id"] == "req-1" and out["model_version"] == reg.head()
    np.testing.assert_allclose(out["scores"], reference_scores(cfg, reg, body), rtol=1e-5,
                               atol=1e-6)


def test_a_server_in_a_new_process_scores_like_training(tmp_path):
    """The config published with the model is read back from disk with its slot and dense
    feature order (the model's input order), not sorted."""
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    server = Server(Registry(reg.root), ServeConfig(port=0), log=False).start()  # from disk
    try:
        body = request(np.random.default_rng(8), n=10)
        out = httpx.post(server.url + "/score", json=body, timeout=30).json()
        np.testing.assert_allclose(out["scores"], reference_scores(cfg, reg, body), rtol=1e-5,
                                   atol=1e-6)
    finally:
        server.stop()


def test_kserve_v2_infer_equals_score(served):
    _, client, _, _, _ = served
    body = request(np.random.default_rng(4), n=5)
    for c in body["candidates"]:
        c.setdefault("price", None)
        c.setdefault("tags", [])
    cands = body["candidates"]
    v2 = {"id": "k1", "inputs": [
        {"name": "user_id", "shape": [1], "datatype": "INT64", "data": [body["user_id"]]},
        {"name": "u_gender", "shape": [1], "datatype": "INT64", "data": [body["user"]["gender"]]},
        {"name": "u_recent", "shape": [1, 4], "datatype": "INT64",
         "data": body["user"]["recent"]},
        {"name": "u_age", "shape": [1], "datatype": "FP32", "data": [body["user"]["age"]]},
        {"name": "item_id", "shape": [5], "datatype": "INT64",
         "data": [c["item_id"] for c in cands]},
        {"name": "i_cat", "shape": [5], "datatype": "BYTES", "data": [c["cat"] for c in cands]},
        {"name": "i_tags", "shape": [5], "datatype": "INT64", "data": [c["tags"] for c in cands]},
        {"name": "i_price", "shape": [5], "datatype": "FP32", "data": [c["price"] for c in cands]},
    ]}
    r = client.post("/v2/models/freshrec/infer", json=v2)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "k1" and out["outputs"][0]["name"] == "scores"
    plain = client.post("/score", json=body).json()["scores"]
    np.testing.assert_allclose(out["outputs"][0]["data"], plain, rtol=1e-6)
    assert client.get("/v2/models/freshrec").json()["name"] == "freshrec"
    assert client.post("/v2/models/other/infer", json=v2).status_code == 404


@pytest.mark.parametrize("content, field, status", [
    (b"{not json", "body", 400),
    (b"[1, 2]", "body", 400),
    (b'{"user": 5, "candidates": []}', "user", 400),
    (b'{"candidates": {"item_id": 1}}', "candidates", 400),
    (b'{"candidates": [{"item_id": 1}, {"cat": 2}]}', "candidates[1].item_id", 400),
    (b'{"candidates": [{"item_id": [1]}]}', "candidates[0].item_id", 400),
    (b'{"candidates": [{"item_id": 1, "cat": {"a": 1}}]}', "candidates[0].cat", 400),
    (b'{"user": {"age": "old"}, "candidates": [{"item_id": 1}]}', "user.age", 400),
    (b'{"candidates": [' + b",".join([b'{"item_id": 1}'] * 51) + b"]}", "candidates", 400),
    (b'{"candidates": [{"item_id": 1, "pad": "' + b"x" * 30_000 + b'"}]}', "body", 413),
])
def test_bad_requests_get_4xx_naming_the_field(served, content, field, status):
    _, client, _, _, _ = served
    r = client.post("/score", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.json()
    ok = client.post("/score", json={"candidates": [{"item_id": 1}]})
    assert ok.status_code == 200 and len(ok.json()["scores"]) == 1


def test_overload_gets_503_with_retry_after(served):
    server, client, _, _, _ = served
    # two requests whose bodies never finish hold both in-flight slots
    socks = []
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"candidates\":")
        socks.append(s)
    deadline = time.monotonic() + 10
    while server.metrics.in_flight.get() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    r = client.post("/score", json={"candidates": [{"item_id": 1}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    for s in socks:
        s.close()
    deadline = time.monotonic() + 10
    while server.metrics.in_flight.get() > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.post("/score", json={"candidates": [{"item_id": 1}]}).status_code == 200


def test_impressions_are_written_for_the_joiner(served, tmp_path):
    server, client, _, reg, log = served
    rng = np.random.default_rng(5)
    bodies = [request(rng, n=4, rid=f"imp-{i}") for i in range(5)]
    now = int(time.time()) + 0.5  # event time, within a day of the server's clock
    for b in bodies:
        b["now"] = now
        assert client.post("/score", json=b).status_code == 200
    client.post("/score", content=b"{bad")  # refused requests write nothing
    server.impressions.close()  # drain the queue
    events = [decode(r.value) for r in log.read(0, 0, max_records=100)]
    assert [e["request_id"] for e in events] == [f"imp-{i}" for i in range(5)]
    for e, b in zip(events, bodies, strict=True):
        assert validate_event(e) == "impression"
        assert e["user_id"] == b["user_id"] and e["user"] == b["user"]
        assert e["timestamp"] == now and e["model_version"] == reg.head()
        assert [c["position"] for c in e["candidates"]] == [0, 1, 2, 3]
        assert [c["item_id"] for c in e["candidates"]] == [c["item_id"] for c in b["candidates"]]
        assert e["candidates"][1]["features"]["cat"] == b["candidates"][1]["cat"]


def test_metrics_text(served):
    _, client, _, reg, _ = served
    client.post("/score", json={"candidates": [{"item_id": 1}]})
    client.post("/score", content=b"nope", headers={"content-type": "application/json"})
    client.post("/score", content=b"{}", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    assert 'freshrec_requests_total{code="200",route="score"} 1' in text
    assert 'freshrec_requests_total{code="400",route="score"} 1' in text
    assert 'freshrec_requests_total{code="415",route="score"} 1' in text
    assert "freshrec_request_seconds_count 3" in text  # latency of every status
    assert f"freshrec_model_version {reg.head()}" in text
    assert "freshrec_request_seconds_bucket" in text and "freshrec_freshness_seconds" in text


def test_not_ready_until_a_model_is_published(tmp_path):
    reg = Registry(tmp_path / "reg")
    cfg = make_config()
    server = Server(reg, ServeConfig(port=0, poll_interval_s=0.05), model_config=cfg, log=False)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
            r = client.post("/score", json={"candidates": [{"item_id": 1}]})
            assert r.status_code == 503 and "retry-after" in r.headers
            train_and_publish(reg, cfg)
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "never became ready"
                time.sleep(0.05)
            assert server.updater.current is not None
            assert client.post("/score", json={"candidates": [{"item_id": 1}]}).status_code == 200
    finally:
        server.stop()


def test_a_server_leaves_the_process_settings_alone(tmp_path):
    """Threads and the switch interval are the entry point's (freshrec serve) to set."""
    before = (torch.get_num_threads(), sys.getswitchinterval())
    config = ServeConfig(port=0, threads=before[0] + 1, switch_interval_s=before[1] / 2)
    with Server(Registry(tmp_path / "reg"), config, model_config=make_config(), log=False):
        assert (torch.get_num_threads(), sys.getswitchinterval()) == before


def test_serve_forever_announces_its_url_once_it_accepts(tmp_path):
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, make_config())
    server = Server(reg, ServeConfig(port=0), log=False)
    announced: list[tuple[str, bool]] = []
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"on_started": lambda *a: announced.append(a)}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not announced and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        (url, ready), = announced
        assert url == server.url and ready is True
        assert httpx.get(url + "/readyz", timeout=30).json()["ready"] is True
    finally:
        server._uvicorn.should_exit = True
        thread.join(30)
