"""The HTTP API (an ASGI app on starlette, JSON through orjson).

Routes
------
``POST /score``
    ``{"request_id"?, "user_id"?, "user": {...}, "candidates": [{"item_id": ...}, ...],
    "now"?}`` -> ``{"request_id", "model_version", "scores": [...]}`` (scores in the order of
    the candidates, calibrated click probabilities).
``POST /v2/models/{name}/infer``
    The same through the KServe v2 inference protocol (see
    :func:`~freshrec.serve.request.parse_v2_request`); the output tensor is ``scores``. A
    request with ``Inference-Header-Content-Length`` uses the binary data extension for its
    inputs, and one asking for binary outputs (``binary_data_output``) gets the scores as
    binary data (:mod:`freshrec.serve._binary`).
``GET /v2``, ``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``/v2/health/live``,
``/v2/health/ready``
    KServe v2 server and model metadata (:mod:`freshrec.serve.v2`) and health; every model
    route also under ``/v2/models/{name}/versions/{version}`` (404 for a version that is not
    the served one).
``GET /v2/openapi.json``
    This API (the protocol's routes and the ones below) as an OpenAPI 3 document
    (:func:`~freshrec.serve.v2.openapi_document`).
``GET /healthz``
    200 while the process serves HTTP.
``GET /readyz``
    200 once a model is loaded and warmed up; 503 before, while draining (shutting down) and
    while every in-flight slot is taken.
``GET /metrics``
    Prometheus text (:class:`~freshrec.serve.metrics.ServeMetrics`).

Errors are JSON ``{"error": message, "field": name}`` (a path no route serves: a JSON 404, a
method it does not take: a JSON 405): 400 for bad input (the message names
the field), 413 for an oversized body, 415 when a scoring request's ``Content-Type`` is not
JSON (``application/json`` or ``application/<x>+json``; a browser page's cross-site
``text/plain`` or form POST never reaches the model; ``/score`` also refuses a typeless one,
v2 ``infer`` takes it as JSON, as the protocol's clients send none), 408 (connection closed) when a body
takes longer than ``body_timeout_s``, 503 with ``Retry-After`` when admission control sheds
the request (``max_in_flight`` requests are being handled, or it waited longer than
``queue_budget_s`` to be scored: see :mod:`freshrec.serve._protocol`) or no model is loaded
yet, 500 (the message says only that the error is in the server's log) when scoring fails. Scoring runs on the event
loop's thread (about a millisecond; handing it to a thread pool costs more than it saves on 2
cores). ``POST /score`` is served by a plain ASGI handler in front of the starlette router
(no request/response objects, no routing: measured in docs/serving.md); every other route
goes through starlette. Each route is one method of :class:`HttpApi`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from freshrec.errors import brief
from freshrec.serve._binary import HEADER as BINARY_HEADER
from freshrec.serve._binary import binary_reply, inline_binary
from freshrec.serve._protocol import ARRIVED
from freshrec.serve.config import ServeConfig
from freshrec.serve.impressions import ImpressionWriter
from freshrec.serve.request import (
    RequestError,
    ScoreRequest,
    build_v2_request,
    parse_request,
    parse_v2_request,
)
from freshrec.serve.updater import ModelUpdater
from freshrec.serve.v2 import SERVER_METADATA, input_datatypes, model_metadata, openapi_document

__all__ = ["build_app", "HttpApi", "INTERNAL_ERROR", "ServeApp", "is_json"]

log = logging.getLogger(__name__)

JSON = "application/json"
OCTETS = "application/octet-stream"

#: The message of every 500: the exception is logged, never sent to the client.
INTERNAL_ERROR = "internal error (details are in the server log)"

#: ``(status, body, extra headers)`` of one scoring reply.
Reply = tuple[int, bytes, dict[str, str] | None]
#: Parses a body (with ``max_candidates``) into a request; raises ``RequestError``.
RequestParser = Callable[[bytes, int], ScoreRequest]
#: Writes the reply body of a scored request: ``(request, scores, model version) -> bytes``.
ReplyWriter = Callable[[ScoreRequest, Any, int | None], tuple[bytes, dict[str, str] | None]]


class _TooLarge(Exception):
    """The body is larger than ``max_body_bytes``."""


class _Disconnected(Exception):
    """The client went away before its body was read."""


class _TooSlow(Exception):
    """The body did not arrive within ``body_timeout_s``."""


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(_dumps(obj), status_code=status, media_type=JSON)


def _error(message: str, field: str | None) -> bytes:
    return _dumps({"error": message, "field": field})


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` header names JSON (parameters such as charset allowed).

    >>> is_json("application/json; charset=utf-8"), is_json("application/vnd.x+json")
    (True, True)
    >>> is_json("text/plain"), is_json(None)
    (False, False)
    """
    if content_type is None:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == JSON or (mime.startswith("application/") and mime.endswith("+json"))


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v).decode("latin-1")
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The body of an ASGI request, refused past ``limit`` bytes or ``timeout_s`` seconds.

    Raises ``_TooLarge``, ``_TooSlow`` or ``_Disconnected``.
    """
    for k, v in scope["headers"]:
        if k == b"content-length" and v.isdigit() and int(v) > limit:
            raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
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
    except TimeoutError:
        raise _TooSlow from None


def _score_json(req: ScoreRequest, scores: Any, version: int | None
                ) -> tuple[bytes, dict[str, str] | None]:
    return _dumps({"request_id": req.request_id, "model_version": version,
                   "scores": scores}), None


class HttpApi:
    """The route handlers of the HTTP API over the model an updater serves.

    Parameters
    ----------
    updater : ModelUpdater
        Holds the served model, its metrics and the recorded requests (for warm-up).
    config : ServeConfig
        Limits (``max_in_flight``, ``max_body_bytes``, ``max_candidates``), model name.
    impressions : ImpressionWriter, optional
        Where each scored request is logged for the joiner.
    naive_reload : callable, optional
        Called at the start of each scoring request (the benchmark's on-the-request-path
        baseline, ``update_mode="naive"``).
    """

    def __init__(self, updater: ModelUpdater, config: ServeConfig, *,
                 impressions: ImpressionWriter | None = None,
                 naive_reload: Callable[[], None] | None = None) -> None:
        self.updater = updater
        self.config = config
        self.impressions = impressions
        self.naive_reload = naive_reload
        self._in_flight = 0
        self._last_done = 0.0  # perf_counter time the last scoring request was answered
        #: Set when the server is shutting down: ``/readyz`` answers 503 ``draining``.
        self.draining = False

    def routes(self) -> list[Route]:
        """The starlette routes of every handler."""
        model = [(f"/v2/models/{{name}}{v}", f"/v2/models/{{name}}{v}/ready",
                  f"/v2/models/{{name}}{v}/infer") for v in ("", "/versions/{version}")]
        return [
            Route("/score", self.score, methods=["POST"]),
            Route("/v2", self.server_meta, methods=["GET"]),
            Route("/v2/openapi.json", self.openapi, methods=["GET"]),
            *(r for meta, ready, infer in model for r in (
                Route(infer, self.infer, methods=["POST"]),
                Route(meta, self.model_meta, methods=["GET"]),
                Route(ready, self.model_ready, methods=["GET"]))),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/healthz", self.live, methods=["GET"]),
            Route("/readyz", self.ready, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ]

    # ------------------------------------------------------------------ handlers
    async def score_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /score`` as a plain ASGI handler (the fast path)."""
        status, payload, headers = await self._score(
            scope, receive, "score", parse_request, _score_json,
            _header(scope, b"content-type"))
        head = [(b"content-type", JSON.encode()), (b"content-length", b"%d" % len(payload))]
        if headers:
            head += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": payload})

    async def score(self, request: Request) -> Response:
        """``POST /score`` through starlette."""
        return _response(await self._score(request.scope, request.receive, "score",
                                           parse_request, _score_json,
                                           request.headers.get("content-type")))

    async def infer(self, request: Request) -> Response:
        """``POST /v2/models/{name}/infer``: KServe v2 inference."""
        unknown = self._unknown_model(request)
        if unknown is not None:
            return unknown
        parse = self._v2_parser(None)
        # the protocol's reference client (tritonclient) sends JSON requests with no
        # Content-Type: a missing one is taken as JSON here, a non-JSON one is refused
        content_type = request.headers.get("content-type", JSON)
        json_length = request.headers.get(BINARY_HEADER)
        if json_length is not None:  # binary data extension: a custom header, never cross-site
            if not json_length.isdigit():
                return _json({"error": f"{BINARY_HEADER}: must be a byte count, got "
                                       f"{brief(json_length)}", "field": BINARY_HEADER}, 400)
            content_type, parse = JSON, self._v2_parser(int(json_length))
        return _response(await self._score(request.scope, request.receive, "v2_infer", parse,
                                           self._v2_json, content_type))

    async def model_meta(self, request: Request) -> Response:
        """``GET /v2/models/{name}``: the inputs and output of the served model."""
        unknown = self._unknown_model(request)
        if unknown is not None:
            return unknown
        cur = self.updater.current
        return _json(model_metadata(None if cur is None else cur.layout,
                                    self.config.model_name,
                                    None if cur is None else cur.version))

    async def server_meta(self, request: Request) -> Response:
        """``GET /v2``: the server's name, version and extensions."""
        return _json(SERVER_METADATA)

    async def openapi(self, request: Request) -> Response:
        """``GET /v2/openapi.json``: this API as an OpenAPI 3 document."""
        return _json(openapi_document())

    async def ready(self, request: Request) -> Response:
        """``GET /readyz``, ``/v2/health/ready``: the updater's status; 503 until a model is
        loaded and warmed up, while draining, and while every in-flight slot is taken."""
        st = self.updater.status()
        st["in_flight"] = self._in_flight
        st["pid"] = os.getpid()  # which worker process answered (serve --workers N)
        if not st["ready"]:
            why = st.get("last_error") or "no model loaded and warmed up yet"
        elif self.draining:
            why = "draining (shutting down)"
        elif self._in_flight >= self.config.max_in_flight:
            why = f"saturated: {self._in_flight} requests in flight (max_in_flight=" \
                  f"{self.config.max_in_flight})"
        else:
            return _json(st)
        return _json({"error": f"not ready: {why}", **st, "ready": False}, 503)

    async def model_ready(self, request: Request) -> Response:
        """``GET /v2/models/{name}/ready``."""
        unknown = self._unknown_model(request)
        if unknown is not None:
            return unknown
        return await self.ready(request)

    async def live(self, request: Request) -> Response:
        """``GET /healthz``, ``/v2/health/live``: 200 while the process serves HTTP."""
        return _json({"live": True})

    async def metrics_text(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text."""
        return Response(await self.updater.metrics_text(),
                        media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ scoring
    async def _score(self, scope: Scope, receive: Receive, route: str, parse: RequestParser,
                     respond: ReplyWriter, content_type: str | None) -> Reply:
        """Score one request; its latency (from its arrival, when the connection stamped it)
        is counted whatever its status."""
        t0 = scope.get(ARRIVED) or time.perf_counter()
        try:
            if not is_json(content_type):
                self.updater.metrics.requests.inc(route=route, code="415")
                self.updater.metrics.errors.inc(kind="bad_request")
                return 415, _error(f"Content-Type: must be application/json, got "
                                   f"{brief(content_type)}", "Content-Type"), None
            return await self._score_limited(scope, receive, route, parse, respond)
        finally:
            self._last_done = time.perf_counter()
            self.updater.metrics.latency.observe(self._last_done - t0)

    async def _score_limited(self, scope: Scope, receive: Receive, route: str,
                             parse: RequestParser, respond: ReplyWriter) -> Reply:
        """Score one request within the in-flight limit; any failure is a 500 (logged)."""
        sc, metrics = self.config, self.updater.metrics
        if self._in_flight >= sc.max_in_flight:
            return self._shed(route, "in_flight", f"{self._in_flight} requests in flight "
                                                  f"(max_in_flight={sc.max_in_flight})")
        self._in_flight += 1
        metrics.in_flight.set(self._in_flight)
        try:
            return await self._score_admitted(scope, receive, route, parse, respond)
        except Exception:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("request failed route=%s", route)
            metrics.requests.inc(route=route, code="500")
            metrics.errors.inc(kind="internal")
            return 500, _error(INTERNAL_ERROR, None), None
        finally:
            self._in_flight -= 1
            metrics.in_flight.set(self._in_flight)

    async def _score_admitted(self, scope: Scope, receive: Receive, route: str,
                              parse: RequestParser, respond: ReplyWriter) -> Reply:
        """Read the body, shed the request if it waited past the queue budget, parse and
        score it."""
        sc, metrics = self.config, self.updater.metrics
        try:
            body = await _read_body(scope, receive, sc.max_body_bytes, sc.body_timeout_s)
        except _TooSlow:
            metrics.requests.inc(route=route, code="408")
            metrics.slow_clients.inc(phase="body")
            return 408, _error(f"body: not received within body_timeout_s="
                               f"{sc.body_timeout_s:g}", "body"), {"Connection": "close"}
        except _Disconnected:  # the client went away mid-body: nothing to answer
            metrics.requests.inc(route=route, code="499")
            return 499, b"", None
        except _TooLarge:
            metrics.requests.inc(route=route, code="413")
            metrics.errors.inc(kind="too_large")
            return 413, _error(f"body: larger than max_body_bytes={self.config.max_body_bytes}",
                               "body"), None
        arrived = scope.get(ARRIVED)
        if arrived is not None:
            waited = time.perf_counter() - arrived
            metrics.queue_wait.observe(waited)
            # shed only a request that waited behind other requests (one answered since it
            # arrived): a lone request the OS delayed is no queue, shedding it helps no one
            if waited > sc.queue_budget_s and self._last_done > arrived:
                return self._shed(route, "queue", f"waited {waited * 1e3:.0f} ms to be scored "
                                                  f"(queue_budget_s={sc.queue_budget_s:g})")
        if self.naive_reload is not None:
            self.naive_reload()
        pred = self.updater.current
        if pred is None:
            metrics.requests.inc(route=route, code="503")
            return 503, _error("no model loaded yet", None), self._retry_after()
        try:
            req = parse(body, self.config.max_candidates)
            t1 = time.perf_counter()
            scores = pred.score(req)
            metrics.predict.observe(time.perf_counter() - t1)
        except RequestError as e:
            metrics.requests.inc(route=route, code=str(e.status))
            metrics.errors.inc(kind="bad_request")
            return e.status, _error(str(e), e.field), None
        version = pred.version
        self._record(req, version, scores)
        payload, headers = respond(req, scores, version)
        metrics.candidates.inc(len(req.candidates))
        metrics.requests.inc(route=route, code="200")
        return 200, payload, headers

    def _record(self, req: ScoreRequest, version: int | None, scores: Any) -> None:
        """Keep the request for warm-up (the first ones, then 1 in 64) and log its impression
        (with the scores it was answered)."""
        recorded = self.updater.recorded
        if len(recorded) < (recorded.maxlen or 0) or hash(req.request_id) % 64 == 0:
            recorded.append(req)
        if self.impressions is not None:
            ts = req.now if req.now is not None else time.time()
            self.impressions.submit(req, version=version, timestamp=ts, scores=scores)

    def _v2_json(self, req: ScoreRequest, scores: Any, version: int | None
                 ) -> tuple[bytes, dict[str, str] | None]:
        """The v2 reply: JSON, or with the binary data extension when the request asked."""
        output = {"name": "scores", "shape": [len(scores)], "datatype": "FP32"}
        head = {"model_name": self.config.model_name, "model_version": str(version),
                "id": str(req.request_id), "outputs": [output]}
        if not req.binary_output:
            output["data"] = scores
            return _dumps(head), None
        body, json_length = binary_reply(head, [np.asarray(scores, np.float32)])
        return body, {BINARY_HEADER: str(json_length), "Content-Type": OCTETS}

    def _v2_parser(self, json_length: int | None) -> RequestParser:
        """The parser of a v2 body (``json_length``: the JSON part's size in a binary-extension
        body), its inputs checked against the metadata of the model serving when it parses."""

        def parse(body: bytes, limit: int) -> ScoreRequest:
            cur = self.updater.current
            types = None if cur is None else input_datatypes(cur.layout)
            if json_length is None:
                return parse_v2_request(body, limit, types)
            return build_v2_request(inline_binary(body, json_length), limit, types)

        return parse

    def _shed(self, route: str, reason: str, why: str) -> Reply:
        """A 503 with ``Retry-After`` for a request turned away by admission control."""
        metrics = self.updater.metrics
        metrics.requests.inc(route=route, code="503")
        metrics.errors.inc(kind="overload")
        metrics.shed.inc(reason=reason)
        return 503, _error(f"overloaded: {why}; retry later", None), self._retry_after()

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.config.retry_after_s)}

    def _unknown_model(self, request: Request) -> Response | None:
        """A 404 when the path names another model, or another version, than the served one."""
        name = request.path_params["name"]
        if name != self.config.model_name:
            return _json({"error": f"model {name!r} not found (serving "
                                   f"{self.config.model_name!r})", "field": "name"}, 404)
        version = request.path_params.get("version")
        cur = self.updater.current
        served = None if cur is None or cur.version is None else str(cur.version)
        if version is not None and version != served:
            return _json({"error": f"model {name!r} version {version!r} not found (serving "
                                   f"version {served!r})", "field": "version"}, 404)
        return None


async def _http_error(request: Request, exc: Exception) -> Response:
    """A routing error (no such path: 404, wrong method: 405), or a handler's failure (500,
    the exception only in the server's log), as a JSON error object."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else INTERNAL_ERROR
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return Response(_error(f"{request.method} {request.url.path}: {detail}", "path"),
                    status_code=status, media_type=JSON, headers=headers)


def _response(reply: Reply) -> Response:
    status, payload, headers = reply
    return Response(payload, status_code=status, media_type=JSON, headers=headers)


class ServeApp:
    """The ASGI app: ``POST /score`` on the plain handler, every other route on the router."""

    def __init__(self, api: HttpApi, router: Starlette) -> None:
        self.api = api
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/score" and scope["method"] == "POST":
            await self.api.score_asgi(scope, receive, send)
        else:
            await self.router(scope, receive, send)


def build_app(updater: ModelUpdater, *, config: ServeConfig | None = None,
              impressions: ImpressionWriter | None = None,
              naive_reload: Callable[[], None] | None = None) -> ServeApp:
    """The ASGI app over an updater (the served model) and an impression writer.

    Parameters
    ----------
    updater : ModelUpdater
        The served model.
    config : ServeConfig, optional
        Defaults to the updater's ``serve_config``.
    impressions : ImpressionWriter, optional
        Where scored requests are logged.
    naive_reload : callable, optional
        Called at the start of each scoring request (the benchmark's on-the-request-path
        baseline, ``update_mode="naive"``).

    Returns
    -------
    ServeApp
        The ASGI application (its handlers are its ``api`` attribute, its starlette router
        its ``router``).
    """
    api = HttpApi(updater, config if config is not None else updater.serve_config,
                  impressions=impressions, naive_reload=naive_reload)
    return ServeApp(api, Starlette(routes=api.routes(),
                               exception_handlers={HTTPException: _http_error,
                                                   Exception: _http_error}))
