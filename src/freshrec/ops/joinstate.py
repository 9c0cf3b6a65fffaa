"""The joiner's state as seen from its logs: lag (newest event time in its input minus
newest example time in its output) and quarantined examples.

Examples
--------
>>> import tempfile, orjson
>>> from freshrec.stream.open import open_log
>>> d = tempfile.mkdtemp()
>>> events, examples = f"file:{d}/ev", f"file:{d}/ex"
>>> _ = open_log(events).append([orjson.dumps({"type": "click", "timestamp": 100.0})])
>>> _ = open_log(examples).append([orjson.dumps({"item_id": 1, "click": 1.0,
...                                               "event_time": 70})])
>>> joiner_lag_s(events, examples)
30.0
>>> quarantined(f"file:{d}/none") is None
True
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import orjson

from freshrec.errors import FreshrecError
from freshrec.stream.base import Log

__all__ = ["joiner_lag_s", "open_existing", "quarantined"]

log = logging.getLogger(__name__)


def open_existing(spec: str) -> Log | None:
    """``spec``'s log, or ``None`` when it cannot be opened; a file log that does not exist
    is not created (reading must not change what it watches)."""
    from freshrec.stream.open import open_log

    path = spec.removeprefix("file:")
    if "://" not in spec and not Path(path).exists():
        return None
    try:
        return open_log(spec)
    except (FreshrecError, OSError) as e:
        log.debug("ops: log %s cannot be opened: %s", spec, e)
        return None


def _newest(spec: str, time_of: Callable[[bytes], float | None]) -> float | None:
    """The largest time of the last record of each partition of ``spec``'s log."""
    lg = open_existing(spec)
    if lg is None:
        return None
    try:
        best = None
        for p in range(lg.partitions):
            end = lg.end_offset(p)
            if end == 0:
                continue
            for r in lg.read(p, end - 1, 1):
                t = time_of(r.value)
                if t is not None:
                    best = t if best is None else max(best, t)
        return best
    except (FreshrecError, OSError) as e:
        log.debug("ops: log %s cannot be read: %s", spec, e)
        return None
    finally:
        lg.close()


def _event_time(value: bytes) -> float | None:
    with contextlib.suppress(ValueError, TypeError):
        ev = orjson.loads(value)
        if isinstance(ev, dict) and isinstance(ev.get("timestamp"), int | float):
            return float(ev["timestamp"])
    return None


def _example_time(value: bytes) -> float | None:
    from freshrec.stream.events import decode_examples

    rb, _ = decode_examples([value])
    if rb is None or "event_time" not in rb.schema.names or rb.num_rows == 0:
        return None
    return float(max(v for v in rb.column("event_time").to_pylist() if v is not None))


def joiner_lag_s(events: str, examples: str) -> float | None:
    """Seconds between the newest event in ``events`` and the newest example in
    ``examples`` (``None`` when either is empty or unreadable)."""
    a, b = _newest(events, _event_time), _newest(examples, _example_time)
    return None if a is None or b is None else max(a - b, 0.0)


def quarantined(spec: str) -> int | None:
    """Records in the quarantine log ``spec`` (``None``: none there or unreadable)."""
    lg = open_existing(spec)
    if lg is None:
        return None
    try:
        return sum(lg.end_offset(p) for p in range(lg.partitions))
    finally:
        lg.close()
