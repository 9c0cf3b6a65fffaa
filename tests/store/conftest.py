"""Fixtures of the store tests: a Redis URL per backend (one server, a 3-node cluster)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(params=["single", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a real Redis: one server, then the session's 3-node Redis Cluster."""
    name = "redis_server" if request.param == "single" else "redis_cluster"
    return str(request.getfixturevalue(name))


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Append tables or clients; they are closed after the test."""
    opened: list[Any] = []
    yield opened
    for x in opened:
        x.close()
