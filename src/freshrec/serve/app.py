"""The HTTP API (an ASGI app on starlette, JSON through orjson).

Routes
------
``POST /score``
    ``{"request_id"?, "user_id"?, "user": {...}, "candidates": [{"item_id": ...}, ...],
    "now"?}`` -> ``{"request_id", "model_version", "scores": [...]}`` (scores in the order of
    the candidates, calibrated click probabilities).
``POST /v2/models/{name}/infer``
    The same through the KServe v2 inference protocol (see
    :func:`~freshrec.serve.request.parse_v2_request`); the output tensor is ``scores``.
``GET /v2/models/{name}``, ``/v2/models/{name}/ready``, ``/v2/health/live``, ``/v2/health/ready``
    KServe v2 metadata and health.
``GET /healthz``
    200 while the process serves HTTP.
``GET /readyz``
    200 once a model is loaded and warmed up, 503 before.
``GET /metrics``
    Prometheus text (:class:`~freshrec.serve.metrics.ServeMetrics`).

Errors are JSON ``{"error": message, "field": name}``: 400 for bad input (the message names
the field), 413 for an oversized body, 503 with ``Retry-After`` when more than
``max_in_flight`` requests are being handled or no model is loaded yet. Scoring runs on the
event loop's thread (about a millisecond; handing it to a thread pool costs more than it
saves on 2 cores). ``POST /score`` is served by a plain ASGI handler in front of the
starlette router (no request/response objects, no routing: measured in docs/serving.md);
every other route goes through starlette.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from freshrec.serve.config import ServeConfig
from freshrec.serve.impressions import ImpressionWriter
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.request import RequestError, ScoreRequest, parse_request, parse_v2_request
from freshrec.serve.updater import ModelUpdater

__all__ = ["build_app"]

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type=JSON, headers=headers)


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _TooLarge
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


_Reply = tuple[int, bytes, dict[str, str] | None]


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _reply(r: _Reply) -> Response:
    status, payload, headers = r
    return Response(payload, status_code=status, media_type=JSON, headers=headers)


def build_app(updater: ModelUpdater, *, config: ServeConfig | None = None,
              impressions: ImpressionWriter | None = None,
              naive_reload: Callable[[], None] | None = None) -> Any:
    """The ASGI app over an updater (the served model) and an impression writer.

    ``naive_reload``: called at the start of each scoring request (the benchmark's
    on-the-request-path baseline, ``update_mode="naive"``).
    """
    sc = config if config is not None else updater.serve_config
    metrics: ServeMetrics = updater.metrics
    state = {"in_flight": 0}
    retry = {"Retry-After": str(sc.retry_after_s)}
    limit = sc.max_body_bytes

    async def _score(read_body: Callable[[], Awaitable[bytes]], route: str,
                     parse: Callable[[bytes, int], ScoreRequest],
                     respond: Callable[[ScoreRequest, Any, int | None], bytes]) -> _Reply:
        t0 = time.perf_counter()
        if state["in_flight"] >= sc.max_in_flight:
            metrics.requests.inc(route=route, code="503")
            metrics.errors.inc(kind="overload")
            return 503, _dumps({"error": f"overloaded: {state['in_flight']} requests in flight "
                                         f"(max_in_flight={sc.max_in_flight})",
                                "field": None}), retry
        state["in_flight"] += 1
        metrics.in_flight.set(state["in_flight"])
        try:
            try:
                body = await read_body()
            except _Disconnected:  # the client went away mid-body: nothing to answer
                metrics.requests.inc(route=route, code="499")
                return 499, b"", None
            except _TooLarge:
                metrics.requests.inc(route=route, code="413")
                metrics.errors.inc(kind="too_large")
                return 413, _dumps({"error": f"body: larger than max_body_bytes={limit}",
                                    "field": "body"}), None
            if naive_reload is not None:
                naive_reload()
            pred = updater.current
            if pred is None:
                metrics.requests.inc(route=route, code="503")
                return 503, _dumps({"error": "no model loaded yet", "field": None}), retry
            try:
                req = parse(body, sc.max_candidates)
                t1 = time.perf_counter()
                scores = pred.score(req)
                metrics.predict.observe(time.perf_counter() - t1)
            except RequestError as e:
                metrics.requests.inc(route=route, code=str(e.status))
                metrics.errors.inc(kind="bad_request")
                return e.status, _dumps({"error": str(e), "field": e.field}), None
            version = pred.version
            if len(updater.recorded) < (updater.recorded.maxlen or 0) or \
                    hash(req.request_id) % 64 == 0:
                updater.recorded.append(req)
            if impressions is not None:
                ts = req.now if req.now is not None else time.time()
                impressions.submit(req, version=version, timestamp=ts)
            payload = respond(req, scores, version)
            metrics.candidates.inc(len(req.candidates))
            metrics.requests.inc(route=route, code="200")
            metrics.latency.observe(time.perf_counter() - t0)
            return 200, payload, None
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("request failed")
            metrics.requests.inc(route=route, code="500")
            metrics.errors.inc(kind="internal")
            return 500, _dumps({"error": f"internal error: {type(e).__name__}: {e}",
                                "field": None}), None
        finally:
            state["in_flight"] -= 1
            metrics.in_flight.set(state["in_flight"])

    def _score_json(req: ScoreRequest, scores: Any, version: int | None) -> bytes:
        return _dumps({"request_id": req.request_id, "model_version": version,
                       "scores": scores})

    async def score(request: Request) -> Response:
        return _reply(await _score(lambda: _read_body(request, limit), "score", parse_request,
                                   _score_json))

    def _check_name(request: Request) -> Response | None:
        name = request.path_params["name"]
        if name != sc.model_name:
            return _json({"error": f"model {name!r} not found (serving {sc.model_name!r})",
                          "field": "name"}, 404)
        return None

    async def infer(request: Request) -> Response:
        bad = _check_name(request)
        if bad is not None:
            return bad

        def respond(req: ScoreRequest, scores: Any, version: int | None) -> bytes:
            return _dumps({"model_name": sc.model_name, "model_version": str(version),
                           "id": str(req.request_id),
                           "outputs": [{"name": "scores", "shape": [len(scores)],
                                        "datatype": "FP32", "data": scores}]})

        return _reply(await _score(lambda: _read_body(request, limit), "v2_infer",
                                   parse_v2_request, respond))

    async def model_meta(request: Request) -> Response:
        bad = _check_name(request)
        if bad is not None:
            return bad
        cur = updater.current
        lay = cur.layout if cur is not None else None
        inputs = []
        if lay is not None:
            for s in lay.user_slots:
                inputs.append({"name": s.name if s.key != "user_id" else "user_id",
                               "datatype": "BYTES", "shape": [1]})
            for s in lay.cand_single + lay.cand_multi:
                inputs.append({"name": s.name, "datatype": "BYTES", "shape": [-1]})
        return _json({"name": sc.model_name, "platform": "freshrec",
                      "versions": [str(cur.version)] if cur is not None else [],
                      "inputs": inputs,
                      "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1]}]})

    async def ready(request: Request) -> Response:
        st = updater.status()
        return _json(st, 200 if st["ready"] else 503)

    async def model_ready(request: Request) -> Response:
        bad = _check_name(request)
        if bad is not None:
            return bad
        return await ready(request)

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def prom(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/score", score, methods=["POST"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}", model_meta, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/healthz", live, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
        Route("/metrics", prom, methods=["GET"]),
    ]
    router = Starlette(routes=routes)

    async def fast_score(scope: Any, receive: Any, send: Any) -> None:
        async def read() -> bytes:
            for k, v in scope["headers"]:
                if k == b"content-length" and v.isdigit() and int(v) > limit:
                    raise _TooLarge
            chunks: list[bytes] = []
            size = 0
            while True:
                msg = await receive()
                if msg["type"] != "http.request":
                    raise _Disconnected
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _TooLarge
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

        status, payload, headers = await _score(read, "score", parse_request, _score_json)
        head = [(b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(payload))]
        if headers:
            head += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": payload})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/score" and \
                scope["method"] == "POST":
            await fast_score(scope, receive, send)
        else:
            await router(scope, receive, send)

    app.router = router  # type: ignore[attr-defined]
    return app
