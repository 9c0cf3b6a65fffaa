"""Configuration of the serving process: limits, threads, update polling, impression log.

Examples
--------
>>> ServeConfig().max_candidates
1000
>>> ServeConfig(max_in_flight=0)
Traceback (most recent call last):
...
freshrec.errors.ConfigError: ServeConfig: max_in_flight must be an int >= 1, got 0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from freshrec._validate import build_config, is_int, is_number, require

#: The dense engines of ``serve.engine`` (:mod:`freshrec.serve.engine` builds them).
ENGINES = ("auto", "torch", "onnxruntime")

__all__ = ["ServeConfig", "ServeJobConfig", "serve_config_from_dict"]


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How a :class:`~freshrec.serve.Server` serves.

    Parameters
    ----------
    host, port : str, int
        Where the HTTP server listens (port 0: any free port, see ``Server.port``).
    model_name : str
        Name of the model in the KServe v2 routes (``/v2/models/{model_name}/infer``).
    max_candidates : int
        Most candidates one request may carry; more is a 400 naming ``candidates``.
    max_body_bytes : int
        Largest request body; more is a 413.
    max_in_flight : int
        Scoring requests handled at once (reading their body or being scored); the next ones
        get 503 with ``Retry-After``, and ``/readyz`` says not ready while all are taken.
    queue_budget_s : float
        Admission control: a request that waited longer than this between arriving (its body
        read by the server) and being scored, behind other requests, is answered 503 with
        ``Retry-After`` at once, so under overload the accepted requests' latency stays near
        this budget instead of growing with the queue (measured in docs/serving.md).
    retry_after_s : int
        Value of the ``Retry-After`` header of a 503.
    header_timeout_s : float
        A connection must send a request's headers within this many seconds of opening or
        of starting the request; slower ones are closed and counted (slowloris).
    body_timeout_s : float
        A request's body must arrive within this many seconds of its headers; a slower one
        gets 408 and its connection is closed (counted), freeing its in-flight slot.
    drain_s : float
        On SIGTERM/SIGINT, seconds to keep serving while ``/readyz`` says draining (so a load
        balancer stops sending) before connections are closed. 0: stop at once.
    workers : int
        Worker processes accepting on the one port over embedding tables in shared memory,
        updated by one updater in the parent process (:mod:`freshrec.serve.workers`).
    engine : str
        What runs the dense part of Wide & Deep / DeepFM: ``"auto"`` (ONNX Runtime when
        installed, else torch), ``"torch"`` or ``"onnxruntime"``
        (:mod:`freshrec.serve.engine`; measured in docs/serving.md).
    items_path : str, optional
        JSON-lines item catalogue (one candidate object per line) loaded into the feature
        index with the first model, so that requests may name candidates by id
        (``candidate_ids``; :mod:`freshrec.serve.catalogue`).
    threads : int
        ONNX Runtime intra-op threads, and torch's of the process where the entry point
        (``freshrec serve``) applies it (``0``: leave torch's default). One thread is the
        measured choice on 2 cores (see docs/serving.md).
    poll_interval_s : float
        Wall seconds between looks at the registry's ``HEAD``.
    update_mode : str
        ``"background"`` (default): a thread applies sparse deltas in place and loads, warms
        and swaps dense updates and full snapshots. ``"naive"``: the request that notices a
        new version loads it on the request path with no warm-up (the baseline the
        benchmark compares against; never use it in production).
    warmup_requests : int
        Requests (recorded ones first, then generated ones) scored by a new model before it
        is swapped in or the server reports ready.
    warmup_candidates : int
        Candidates per generated warm-up request.
    chunk_rows : int
        Rows written per short table lock when applying a sparse delta.
    updater_nice : int
        Niceness added to the update thread (Linux: per thread), so loading a new version
        yields the CPU to request handling. 0 leaves it.
    switch_interval_s : float
        ``sys.setswitchinterval`` of the process, applied by the entry point (``freshrec
        serve``): how long a thread may hold the GIL while another waits; short, so the
        update thread's Python work delays requests little. 0 leaves Python's default (5 ms).
    log_queue : int
        Impression events buffered for the log writer; when full, events are dropped and
        counted (``freshrec_impressions_dropped_total``) rather than blocking requests.
    log_partitions : int
        Partitions of the impression log (an event goes to the partition of its request id).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "freshrec"
    max_candidates: int = 1000
    max_body_bytes: int = 4 << 20
    max_in_flight: int = 64
    queue_budget_s: float = 0.02
    retry_after_s: int = 1
    header_timeout_s: float = 5.0
    body_timeout_s: float = 5.0
    drain_s: float = 0.0
    workers: int = 1
    engine: str = "auto"
    items_path: str | None = None
    threads: int = 1
    poll_interval_s: float = 1.0
    update_mode: str = "background"
    warmup_requests: int = 8
    warmup_candidates: int = 100
    chunk_rows: int = 2048
    updater_nice: int = 10
    switch_interval_s: float = 0.0005
    log_queue: int = 100_000
    log_partitions: int = 1

    def __post_init__(self) -> None:
        o = "ServeConfig"
        require(isinstance(self.host, str) and bool(self.host), o, "host", "a non-empty str",
                self.host)
        require(is_int(self.port) and 0 <= self.port <= 65535, o, "port", "an int in [0, 65535]",
                self.port)
        require(isinstance(self.model_name, str) and self.model_name.replace("-", "")
                .replace("_", "").replace(".", "").isalnum(), o, "model_name",
                "a name of letters, digits, '-', '_' or '.'", self.model_name)
        for name in ("max_candidates", "max_body_bytes", "max_in_flight", "retry_after_s",
                     "warmup_candidates", "chunk_rows", "log_queue", "log_partitions",
                     "workers"):
            v = getattr(self, name)
            require(is_int(v) and v >= 1, o, name, "an int >= 1", v)
        for name in ("threads", "warmup_requests", "updater_nice"):
            v = getattr(self, name)
            require(is_int(v) and v >= 0, o, name, "an int >= 0", v)
        require(is_number(self.poll_interval_s) and self.poll_interval_s > 0, o,
                "poll_interval_s", "a number of seconds > 0", self.poll_interval_s)
        for name in ("queue_budget_s", "header_timeout_s", "body_timeout_s"):
            v = getattr(self, name)
            require(is_number(v) and v > 0, o, name, "a number of seconds > 0", v)
        require(is_number(self.drain_s) and self.drain_s >= 0, o, "drain_s",
                "a number of seconds >= 0", self.drain_s)
        require(is_number(self.switch_interval_s) and self.switch_interval_s >= 0, o,
                "switch_interval_s", "a number of seconds >= 0", self.switch_interval_s)
        require(self.items_path is None or (isinstance(self.items_path, str) and
                                            bool(self.items_path)), o, "items_path",
                "a path to a JSON-lines file", self.items_path)
        require(self.engine in ENGINES, o, "engine", f"one of {list(ENGINES)}", self.engine)
        require(self.update_mode in ("background", "naive"), o, "update_mode",
                "'background' or 'naive'", self.update_mode)


def serve_config_from_dict(data: Mapping[str, Any], where: str = "serve") -> ServeConfig:
    """Build a :class:`ServeConfig` from a mapping; unknown keys name ``where``.

    Examples
    --------
    >>> serve_config_from_dict({"port": 9000}).port
    9000
    >>> serve_config_from_dict({"prot": 9000})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: serve: unknown key 'prot' (expected one of: ...)
    """
    return build_config(ServeConfig, data, where)


@dataclass(frozen=True, kw_only=True)
class ServeJobConfig(ServeConfig):
    """``freshrec serve``: how to serve (:class:`ServeConfig`) plus what to serve from.

    The ``serve`` section of the config document.

    Parameters
    ----------
    registry : str
        Registry directory to serve from (the command refuses to start without one).
    log : str, optional
        Impression log: a directory (file log), ``file:DIR`` or ``redis://...``; ``None``:
        ``log/`` beside the registry; ``"none"``: no impressions are written.

    Examples
    --------
    >>> ServeJobConfig(registry="runs/registry", port=0).log is None
    True
    """

    registry: str = ""
    log: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(isinstance(self.registry, str), "ServeJobConfig", "registry", "a directory",
                self.registry)
        require(self.log is None or (isinstance(self.log, str) and bool(self.log)),
                "ServeJobConfig", "log", "None, 'none' or a log spec", self.log)
