"""Fixtures of the operations tests: a real online run with a registry, the system tools
(headless Chromium, promtool; ``scripts/ensure-system-deps`` installs them when missing), a
real ``freshrec dashboard`` process, and a real HTTP server exporting the server's metrics."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def ensure_tool(name: str) -> str:
    """The path of ``name``; runs ``scripts/ensure-system-deps`` first when it is missing."""
    if shutil.which(name) is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-system-deps")], check=True)
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed"
    return path


def model_doc(slots: list[str], **sections: Any) -> dict[str, Any]:
    """A small config document with one table per slot."""
    return {"features": {"tables": {f"t_{s}": {"dim": 4} for s in slots},
                         "slots": {s: {"table": f"t_{s}"} for s in slots},
                         "labels": ["click"]},
            "model": {"kind": "deepfm", "mlp": [8]},
            "train": {"batch_size": 64, "metrics_window_s": 120, "importance_rate": 0.5,
                      "importance_window_s": 300},
            "online": {"window_report_s": 30}, "sync": {"sparse_interval_s": 0.0},
            **sections}


def examples(n: int, slots: list[str], *, seed: int = 0, t0: int = 1_700_000_000,
             flip: tuple[int, int] | None = None) -> list[bytes]:
    """``n`` examples, one a second, whose click depends on the first slot's id (so a model
    learns an AUC well above 0.5); ``flip=(a, b)`` flips the labels of examples a..b-1; the
    last slot is missing in every third example (coverage 2/3)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ex: dict[str, Any] = {"event_time": t0 + i}
        for j, s in enumerate(slots):
            if j == len(slots) - 1 and len(slots) > 1 and i % 3 == 0:
                continue
            ex[s] = int(rng.integers(0, 20))
        first = ex[slots[0]]
        click = float(rng.random() < (0.8 if first < 6 else 0.1))
        if flip is not None and flip[0] <= i < flip[1]:
            click = 1.0 - click
        ex["click"] = click
        out.append(orjson.dumps(ex))
    return out


def online_run(workdir: Path, slots: list[str], n: int = 1200, **sections: Any) -> dict[str, Any]:
    """Train a real :class:`OnlineTrainer` on ``n`` generated examples, publishing to a real
    registry; returns the config path, run dir and registry."""
    from freshrec.config import config_from_dict
    from freshrec.stream.open import open_log
    from freshrec.sync.registry import Registry
    from freshrec.train.online import OnlineTrainer

    doc = model_doc(slots, **sections)
    cfg_path = workdir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    log = open_log(f"file:{workdir / 'examples'}")
    run_dir, reg = workdir / "run", workdir / "registry"
    data = examples(n, slots)
    trainer = OnlineTrainer(config_from_dict(doc), log, run_dir=run_dir, registry=Registry(reg))
    for i in range(0, n, 300):
        log.append(data[i:i + 300])
        trainer.run(idle_timeout_s=0.0)
    log.close()
    return {"config": cfg_path, "run_dir": run_dir, "registry": reg, "doc": doc}


class _Metrics(BaseHTTPRequestHandler):
    text = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.server.text)  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def serve_metrics() -> Iterator[Any]:
    """A real HTTP server on loopback whose ``/metrics`` is a real
    :class:`~freshrec.serve.metrics.ServeMetrics` rendering; the test records into ``.m``."""
    from freshrec.serve.metrics import ServeMetrics

    m = ServeMetrics()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)

    def render() -> None:
        httpd.text = m.render().encode()  # type: ignore[attr-defined]

    httpd.text = b""  # type: ignore[attr-defined]
    httpd.m = m  # type: ignore[attr-defined]
    httpd.render = render  # type: ignore[attr-defined]
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/metrics"  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def start_dashboard(args: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``freshrec dashboard ARGS`` and return it with the URL it prints."""
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "freshrec.cli", "dashboard", *args],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = re.search(rb"dashboard: (http://\S+)", log_path.read_bytes())
        if m:
            return proc, m.group(1).decode()
        if proc.poll() is not None:
            raise AssertionError(f"freshrec dashboard exited: {log_path.read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"freshrec dashboard printed no URL: {log_path.read_text()}")


def chromium(url: str, *extra: str, budget_ms: int = 3000) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``url`` (``--dump-dom`` or ``--screenshot=...`` in ``extra``),
    its console messages on stderr."""
    exe = ensure_tool("chromium")
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--enable-logging=stderr", "--v=0",
         f"--virtual-time-budget={budget_ms}", "--window-size=1400,2400", *extra, url],
        capture_output=True, text=True, timeout=120, check=True)


def console_messages(stderr: str) -> list[str]:
    """Chromium's console messages in ``stderr`` (headless Chromium logs every level, errors
    and uncaught exceptions included, as ``INFO:CONSOLE`` lines; the page logs nothing when
    all is well)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        server: Any = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.attempts += 1
        if server.attempts <= server.fail_first:
            self.send_response(503)
            self.end_headers()
            return
        server.bodies.append(orjson.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A real webhook receiver on loopback: ``.bodies`` holds the JSON POSTed to it,
    ``.attempts`` counts requests, the first ``.fail_first`` of them are answered 503."""
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    httpd.attempts, httpd.fail_first, httpd.bodies = 0, 0, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/alerts"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
