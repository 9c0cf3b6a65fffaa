"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip (with the reason) elsewhere."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data sets at {SHARED_DATA} (present in CI)")
    return SHARED_DATA
