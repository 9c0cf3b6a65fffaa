"""Fixtures of the serving tests: a real server on loopback over a trained model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from freshrec.serve import ServeConfig, Server
from freshrec.stream import FileLog
from freshrec.sync import Registry
from tests.serve._helpers import make_config, train_and_publish


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, httpx.Client, Any, Registry, FileLog]]:
    """``(server, client, config, registry, impression log)``: a server on loopback with small
    limits (50 candidates, 20 kB bodies, 2 requests in flight)."""
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    log = FileLog(tmp_path / "log")
    server = Server(reg, ServeConfig(port=0, max_candidates=50, max_body_bytes=20_000,
                                     max_in_flight=2, poll_interval_s=0.05), log=log)
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield server, client, cfg, reg, log
    server.stop()
    log.close()


