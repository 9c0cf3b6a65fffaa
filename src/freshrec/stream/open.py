"""Open a log from a one-line spec, as the CLI and the benchmarks name them.

- ``file:PATH`` (or a bare path): :class:`~freshrec.stream.filelog.FileLog`;
- ``redis://HOST:PORT/DB#NAME``: :class:`~freshrec.stream.redislog.RedisLog` with streams
  ``NAME:p<i>`` (``NAME`` defaults to ``events``). The number of partitions is kept in the
  key ``NAME:partitions``; opened without ``partitions``, a log has as many as that key (or
  its highest existing stream) says, so a reader never silently skips a partition; asking
  for more partitions than a log that holds records has is refused (keys would re-route);
- ``kafka://BOOTSTRAP/TOPIC``: :class:`~freshrec.stream.kafkalog.KafkaLog`.

Examples
--------
>>> import tempfile
>>> log = open_log("file:" + tempfile.mkdtemp(), partitions=2)
>>> log.partitions
2
>>> log.close()
"""

from __future__ import annotations

import re

from freshrec.errors import InputError
from freshrec.stream.base import Log
from freshrec.stream.config import FileLogConfig, KafkaLogConfig, RedisLogConfig

__all__ = ["open_log"]


def open_log(spec: str, *, partitions: int | None = None, fsync: str = "interval") -> Log:
    """Open (creating when missing) the log named by ``spec`` (see the module docstring).

    ``partitions``: how many the log has; None takes an existing log's own (1 for a new
    one). Asking a Redis log for fewer partitions than it has raises :class:`InputError`.
    """
    if spec.startswith(("redis://", "unix://")):
        from freshrec.stream.redislog import RedisLog

        url, _, name = spec.partition("#")
        name = name or "events"
        return RedisLog(RedisLogConfig(url=url, name=name,
                                       partitions=_redis_partitions(url, name, partitions)))
    if spec.startswith("kafka://"):
        from freshrec.stream.kafkalog import KafkaLog

        bootstrap, _, topic = spec[len("kafka://"):].partition("/")
        return KafkaLog(KafkaLogConfig(bootstrap=bootstrap, topic=topic or "events",
                                       partitions=partitions or 1))
    from freshrec.stream.filelog import FileLog

    path = spec[len("file:"):] if spec.startswith("file:") else spec
    return FileLog(path, FileLogConfig(partitions=partitions or 1, fsync=fsync))


def _redis_partitions(url: str, name: str, asked: int | None) -> int:
    """The partitions of the Redis log ``name``: recorded in ``NAME:partitions`` (and at
    least one past its highest ``NAME:p<i>`` stream); records ``asked`` for a new log."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        stored = r.get(f"{name}:partitions")
        have = int(stored) if stored is not None else 0
        pat = re.compile(re.escape(name) + r":p(\d+)")
        for key in r.scan_iter(match=f"{name}:p*", count=1000, _type="stream"):
            m = pat.fullmatch(key.decode(errors="replace"))
            if m:
                have = max(have, int(m.group(1)) + 1)
        if asked is not None and asked < have:
            raise InputError(f"redis log {name!r} at {url} has {have} partitions; asked for "
                             f"{asked}, which would skip {have - asked} of them")
        n = asked or have or 1
        if have and n > have and any(r.xlen(f"{name}:p{p}") for p in range(have)):
            raise InputError(f"redis log {name!r} at {url} has {have} partitions and holds "
                             f"records; growing it to {n} would route keys to other "
                             f"partitions than before. Write to a new log instead")
        if n > have or stored is None:
            r.set(f"{name}:partitions", n)
        return n
    finally:
        r.close()
