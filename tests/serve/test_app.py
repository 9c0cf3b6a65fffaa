"""The HTTP handlers over a stand-in updater: failures, unknown models, no model yet."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from freshrec.serve import ServeConfig
from freshrec.serve.app import INTERNAL_ERROR, build_app
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.predictor import FeatureLayout
from tests.serve._helpers import make_config

SECRET = "password=hunter2 at /srv/models/v7"
V2_BODY = {"id": "q1", "inputs": [{"name": "item_id", "shape": [2], "datatype": "INT64",
                                   "data": [7, 8]}]}


class _Client:
    """Requests to an ASGI app in this thread, through httpx's ASGI transport."""

    def __init__(self, app: Any, raise_app_exceptions: bool = True) -> None:
        self.app = app
        self.raise_app_exceptions = raise_app_exceptions

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app,
                                            raise_app_exceptions=self.raise_app_exceptions)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://test") as client:
                return await client.request(method, path, **kw)

        return asyncio.run(send())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)


class _FailingPredictor:
    version = 7
    layout = FeatureLayout(make_config().features)  # v2 inputs are checked against it

    def score(self, req: Any) -> list[float]:
        raise RuntimeError(SECRET)


@dataclass
class _Updater:
    """What the handlers read of a :class:`~freshrec.serve.updater.ModelUpdater`."""

    current: Any = None
    serve_config: ServeConfig = field(default_factory=ServeConfig)
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    recorded: deque = field(default_factory=lambda: deque(maxlen=8))

    def status(self) -> dict[str, Any]:
        return {"ready": self.current is not None}


@pytest.mark.parametrize(("path", "body"), [
    ("/score", {"candidates": [{"item_id": 1}]}),
    ("/v2/models/freshrec/infer", V2_BODY),
])
def test_a_failure_is_a_500_that_does_not_echo_the_exception(path, body, caplog):
    updater = _Updater(current=_FailingPredictor())
    client = _Client(build_app(updater))
    with caplog.at_level(logging.ERROR, logger="freshrec.serve.app"):
        r = client.post(path, json=body)
    assert r.status_code == 500
    assert r.json() == {"error": INTERNAL_ERROR, "field": None}
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    assert SECRET in caplog.text  # the details are in the log
    route = "score" if path == "/score" else "v2_infer"
    assert updater.metrics.requests.get(route=route, code="500") == 1


def test_no_model_yet_is_503_with_retry_after():
    client = _Client(build_app(_Updater(), config=ServeConfig(retry_after_s=3)))
    r = client.post("/score", json={"candidates": [{"item_id": 1}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    for path in ("/readyz", "/v2/health/ready", "/v2/models/freshrec/ready"):
        r = client.get(path)
        assert r.status_code == 503 and r.json()["error"].startswith("not ready"), path
    assert client.get("/healthz").json() == {"live": True}


@pytest.mark.parametrize("path", ["/v2/models/other", "/v2/models/other/ready"])
def test_another_model_name_is_404_naming_it(path):
    client = _Client(build_app(_Updater(current=_FailingPredictor())))
    r = client.get(path)
    assert r.status_code == 404
    assert r.json()["field"] == "name" and "'other'" in r.json()["error"]


class _BrokenPredictor:
    version = 7

    @property
    def layout(self) -> Any:
        raise RuntimeError(SECRET)


def test_a_failing_metadata_handler_is_a_json_500_that_does_not_echo_the_exception():
    client = _Client(build_app(_Updater(current=_BrokenPredictor())),
                     raise_app_exceptions=False)
    r = client.get("/v2/models/freshrec")
    assert r.status_code == 500 and r.json()["error"].endswith(INTERNAL_ERROR)
    assert "hunter2" not in r.text
