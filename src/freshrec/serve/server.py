"""The serving process: updater + impression writer + HTTP app on uvicorn.

:class:`Server` wires them and runs uvicorn either in the calling thread
(:meth:`Server.serve_forever`, what ``freshrec serve`` does) or in a background thread
(:meth:`Server.start` / :meth:`Server.stop`, what tests and the demo do);
:func:`run_server` is the blocking one-call form. Neither sets process-wide state: the
thread count and the interpreter's switch interval of :class:`ServeConfig` are applied by the
entry point (``freshrec serve``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from freshrec.config import FreshrecConfig
from freshrec.errors import InputError, SnapshotCorruptError, StaleDeltaError
from freshrec.serve.app import HttpApi, build_app
from freshrec.serve.config import ServeConfig
from freshrec.serve.impressions import ImpressionWriter
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.updater import ModelUpdater
from freshrec.stream.base import Log
from freshrec.stream.open import open_log
from freshrec.sync import Registry

__all__ = ["Server", "run_server", "default_log_spec"]

log = logging.getLogger(__name__)


def default_log_spec(registry: str | os.PathLike[str]) -> str:
    """The default impression log: a file log ``log/`` beside the registry directory.

    >>> default_log_spec("/runs/a/registry")
    'file:/runs/a/log'
    """
    return "file:" + str(Path(registry).resolve().parent / "log")


class Server:
    """A scoring server over a registry.

    It serves the newest version it can verify (``HEAD`` unless a version on its chain is
    damaged: see :class:`~freshrec.sync.Subscriber`) and follows the registry from there. When
    no version can be served it starts not ready and waits for one, like on an empty registry.

    Parameters
    ----------
    registry : path or Registry
        Where model versions are published.
    config : ServeConfig, optional
    model_config : FreshrecConfig, optional
        The model's config; by default read from the served version's ``meta["config"]``.
    log : Log or str or None, optional
        Impression log: a :class:`~freshrec.stream.Log`, a spec for
        :func:`~freshrec.stream.open.open_log` (``file:DIR``, ``redis://...``), ``None`` for
        the default file log beside the registry, or ``False`` for none.
    sock : socket.socket, optional
        A bound listening socket to accept on instead of binding ``config.host:port`` (a
        worker process of ``serve --workers N``); it is closed with the server.
    updater : ModelUpdater, optional
        What holds the served model (default: one following ``registry``; a worker process
        passes one following the shared tables).

    Examples
    --------
    ::

        server = Server("runs/x/registry", ServeConfig(port=0))
        server.start()                 # returns once the model is loaded and warm
        httpx.post(server.url + "/score", json={...})
        server.stop()
    """

    def __init__(self, registry: str | os.PathLike[str] | Registry,
                 config: ServeConfig | None = None, *,
                 model_config: FreshrecConfig | None = None,
                 log: Log | str | bool | None = None,
                 sock: socket.socket | None = None,
                 updater: ModelUpdater | None = None) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.config = config if config is not None else ServeConfig()
        self.model_config = model_config
        self._log_arg = log
        self.metrics = ServeMetrics()
        self.updater = updater if updater is not None else \
            ModelUpdater(self.registry, model_config, self.config, self.metrics)
        self.metrics = self.updater.metrics
        self.log: Log | None = None
        self.impressions: ImpressionWriter | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = sock
        self.port: int | None = None
        self.api: HttpApi | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (after :meth:`start`)."""
        return f"http://{self.config.host}:{self.port}"

    def _prepare(self) -> Any:
        sc = self.config
        if self._log_arg is not False:
            if isinstance(self._log_arg, Log):
                self.log = self._log_arg
            else:
                spec = self._log_arg if isinstance(self._log_arg, str) else \
                    default_log_spec(self.registry.root)
                self.log = open_log(spec, partitions=sc.log_partitions)
            self.impressions = ImpressionWriter(self.log, max_queue=sc.log_queue,
                                                metrics=self.metrics)
            self.impressions.start()
        naive = None
        if sc.update_mode == "naive":
            naive = self._naive_reloader()
            self._load_first(warm=False)
        else:
            self._load_first(warm=True)
            self.updater.start()
        app = build_app(self.updater, config=sc, impressions=self.impressions,
                        naive_reload=naive)
        self.api = app.api
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((sc.host, sc.port))
        self.port = self._sock.getsockname()[1]
        ucfg = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                              http=self._http_impl(), loop=_loop_impl(),
                              timeout_graceful_shutdown=max(5, math.ceil(sc.body_timeout_s)))
        self._uvicorn = _DrainingServer(ucfg, self)
        return self._uvicorn

    def _http_impl(self) -> Any:
        """The connection protocol: arrival stamps and a header deadline over httptools
        (:mod:`freshrec.serve._protocol`), else plain h11."""
        try:
            from freshrec.serve._protocol import protocol_class
        except ImportError:
            log.warning("httptools is not installed: no queue-time admission control and no "
                        "header deadline (install the serve extra)")
            return "h11"
        return protocol_class(self.config.header_timeout_s, self._slow_client)

    def _slow_client(self, phase: str) -> None:
        self.metrics.slow_clients.inc(phase=phase)

    def drain(self) -> None:
        """Start draining: ``/readyz`` answers 503 from now on while requests are still
        served (what SIGTERM does for ``serve.drain_s`` seconds before stopping)."""
        if self.api is not None:
            self.api.draining = True

    def _load_first(self, *, warm: bool) -> None:
        """Load the newest servable version; when there is none, start not ready."""
        if self.registry.head() is None:
            log.warning("registry %s is empty: not ready until a version is published",
                        self.registry.root)
            return
        try:
            self.updater.load(warm=warm)
        except (SnapshotCorruptError, StaleDeltaError, LookupError) as e:
            log.error("registry %s: no version can be served (%s): not ready until a full "
                      "snapshot is published (freshrec registry repair)", self.registry.root, e)

    def _naive_reloader(self) -> Any:
        """Reload (full, no warm-up) on the request path when ``HEAD`` moved."""
        last: dict[str, Any] = {"t": 0.0, "head": self.registry.head()}
        interval = self.config.poll_interval_s

        def check() -> None:
            now = time.monotonic()
            if now - last["t"] < interval:
                return
            last["t"] = now
            head = self.registry.head()
            if head is not None and head != last["head"]:  # (not when HEAD is damaged)
                last["head"] = head
                self.updater.load(warm=False)

        return check

    def serve_forever(self, on_started: Callable[[str, bool], None] | None = None) -> None:
        """Load, then serve in this thread until interrupted (``freshrec serve``);
        ``on_started(url, ready)`` is called (on another thread) once connections are
        accepted, ``ready`` saying whether a model is loaded."""
        server = self._prepare()
        log.info("serving on %s", self.url)
        if on_started is not None:
            threading.Thread(target=self._announce, args=(server, on_started),
                             name="freshrec-announce", daemon=True).start()
        try:
            server.run(sockets=[self._sock])
        finally:
            self._cleanup()

    def _announce(self, server: Any, on_started: Callable[[str, bool], None]) -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.02)
        on_started(self.url, bool(self.updater.status()["ready"]))

    def start(self, timeout_s: float = 60.0) -> Server:
        """Load, then serve on a background thread; returns once the server accepts."""
        server = self._prepare()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self._sock]},
                                        name="freshrec-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise InputError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving, the updater and the impression writer (queued events are written)."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._cleanup()

    def _cleanup(self) -> None:
        self.updater.stop()
        if self.impressions is not None:
            self.impressions.close()
            self.impressions = None
        if self.log is not None and not isinstance(self._log_arg, Log):
            self.log.close()
            self.log = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _DrainingServer(uvicorn.Server):
    """uvicorn's server whose first SIGTERM/SIGINT drains for ``drain_s`` seconds
    (``/readyz`` 503, requests still served) before the graceful stop."""

    def __init__(self, config: uvicorn.Config, owner: Server) -> None:
        super().__init__(config)
        self._owner = owner

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain_s = self._owner.config.drain_s
        api = self._owner.api
        if drain_s <= 0 or api is None or api.draining:
            super().handle_exit(sig, frame)
            return
        log.info("draining for %g s before stopping (readiness is 503)", drain_s)
        api.draining = True
        timer = threading.Timer(drain_s, super().handle_exit, (sig, None))
        timer.daemon = True
        timer.start()


def _loop_impl() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_server(registry: str | os.PathLike[str], *, config: ServeConfig | None = None,
               model_config: FreshrecConfig | None = None,
               log: Log | str | bool | None = None,
               on_started: Callable[[str, bool], None] | None = None) -> None:
    """Serve ``registry`` until interrupted (blocking); see :class:`Server` and
    :meth:`Server.serve_forever`."""
    Server(registry, config, model_config=model_config, log=log).serve_forever(on_started)
