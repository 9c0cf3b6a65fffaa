"""``freshrec demo --user-store redis``: the loop with the user table in Redis.

The demo's trainer then keeps the ``user`` table in Redis (write-back cache, flushed after
each checkpoint, every 2 s) and its server reads users' rows from Redis per request. The
Redis is ``demo.redis`` when the demo uses Redis Streams for its logs, else a private
``redis-server`` the demo starts in its work directory and stops at the end.

Examples
--------
>>> store_overrides("redis://127.0.0.1:6379/0", "demo-1")[:2]
[('features.tables.user.backend', 'redis'), ('features.tables.user.store.url', 'redis://127.0.0.1:6379/0')]
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from freshrec.errors import ConfigError

__all__ = ["start_store", "stop_store", "store_overrides"]

#: How often the demo's trainer checkpoints (and so flushes user rows to Redis).
CHECKPOINT_EVERY_S = 2.0


def store_overrides(url: str, prefix: str) -> list[tuple[str, Any]]:
    """``--set`` overrides that move the ``user`` table to Redis at ``url`` under ``prefix``."""
    return [("features.tables.user.backend", "redis"),
            ("features.tables.user.store.url", url),
            ("features.tables.user.store.prefix", prefix),
            ("online.checkpoint_every_s", CHECKPOINT_EVERY_S)]


def start_store(redis_url: str | None, workdir: Path,
                timeout_s: float = 10.0) -> tuple[str, subprocess.Popen[bytes] | None]:
    """``(url, process)``: ``redis_url`` as it is (no process), or a private redis-server on a
    free loopback port with its files in ``workdir/redis``.

    Raises
    ------
    ConfigError
        No ``redis_url`` and no ``redis-server`` on PATH.
    """
    if redis_url:
        return redis_url, None
    if shutil.which("redis-server") is None:
        raise ConfigError("demo.user_store: redis needs demo.redis (a Redis URL) or "
                          "redis-server on PATH (scripts/ensure-redis)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    d = workdir / "redis"
    d.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(d), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise ConfigError(f"demo: redis-server did not start on port {port}") from None
            time.sleep(0.05)


def stop_store(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a private redis-server from :func:`start_store` (nothing for a given URL)."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
