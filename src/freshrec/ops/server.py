"""``freshrec dashboard``'s HTTP server: the page, its data, Plotly's script and ``/metrics``.

A :class:`DashboardServer` scrapes its endpoints every ``interval_s`` on a background thread
and serves, on loopback by default: ``/`` (the page), ``/data.js`` and ``/data.json`` (the
collected series), ``/plotly.min.js``, ``/metrics`` (:func:`~freshrec.ops.exporter.prometheus_text`)
and ``/healthz``.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from freshrec.ops.exporter import prometheus_text
from freshrec.ops.page import data_script, plotly_js, render_page

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig
    from freshrec.ops.collect import Collector

__all__ = ["DashboardServer"]

log = logging.getLogger(__name__)


class DashboardServer:
    """Serves the dashboard of ``config`` with data from ``collector``.

    Parameters
    ----------
    config : FreshrecConfig
    collector : Collector
    host, port : str, int
        Where to listen (port 0: a free one; :attr:`url` says which).
    interval_s : float
        Seconds between scrapes of the collector's endpoints.
    title : str
    """

    def __init__(self, config: FreshrecConfig, collector: Collector, *, host: str = "127.0.0.1",
                 port: int = 0, interval_s: float = 5.0, title: str = "freshrec") -> None:
        self.config = config
        self.collector = collector
        self.interval_s = interval_s
        self._page = render_page(config, title=title, refresh_s=interval_s).encode()
        self._plotly = plotly_js()
        self._stop = threading.Event()
        routes = self._routes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = self.path.split("?", 1)[0]
                route = routes.get(path)
                if route is None:
                    self.send_error(404, f"no page {path}")
                    return
                ctype, body = route()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("dashboard %s", format % args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    def _routes(self) -> dict[str, Any]:
        def data() -> dict[str, Any]:
            return self.collector.collect()

        return {
            "/": lambda: ("text/html; charset=utf-8", self._page),
            "/index.html": lambda: ("text/html; charset=utf-8", self._page),
            "/plotly.min.js": lambda: ("application/javascript", self._plotly),
            "/data.js": lambda: ("application/javascript", data_script(data()).encode()),
            "/data.json": lambda: ("application/json", json.dumps(data()).encode()),
            "/metrics": lambda: ("text/plain; version=0.0.4",
                                 prometheus_text(data()).encode()),
            "/healthz": lambda: ("text/plain", b"ok\n"),
        }

    @property
    def url(self) -> str:
        """``http://host:port/`` of the page."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def _scrape_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.collector.scrape()
            except Exception:  # a long-running process never dies on one scrape
                log.exception("dashboard: scrape failed")
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Start scraping and serving on background threads."""
        for target in (self._scrape_loop, self.httpd.serve_forever):
            t = threading.Thread(target=target, name="freshrec-dashboard", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop serving and scraping."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
