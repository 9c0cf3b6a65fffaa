"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests on a fixed sequence of examples, so a red CI is reproducible and
# never depends on the draw; locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: ``start_redis`` options of a server a test kills and restarts: every acknowledged write
#: is on disk (append-only file, fsync before the reply) and comes back.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip (with the reason) elsewhere."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data sets at {SHARED_DATA} (present in CI)")
    return SHARED_DATA


def start_redis(workdir: Path, port: int | None = None, *extra: str):
    """Start a real ``redis-server`` on loopback in ``workdir``; returns ``(process, port)``.

    Runs ``scripts/ensure-redis`` first when ``redis-server`` is not on PATH. ``extra`` are
    more server options (e.g. ``--appendonly yes`` for a server that is killed and restarted).
    """
    import shutil
    import socket
    import subprocess
    import time

    if shutil.which("redis-server") is None:
        script = Path(__file__).resolve().parents[1] / "scripts" / "ensure-redis"
        subprocess.run(["bash", str(script)], check=True)
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    args = ["--save", "", "--appendonly", "no"] if not extra else list(extra)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--daemonize", "no", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``redis-server`` on a free loopback port, no persistence; yields its URL."""
    import subprocess

    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
