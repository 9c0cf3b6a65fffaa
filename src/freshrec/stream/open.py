"""Open a log from a one-line spec, as the CLI and the benchmarks name them.

- ``file:PATH`` (or a bare path): :class:`~freshrec.stream.filelog.FileLog`;
- ``redis://HOST:PORT/DB#NAME``: :class:`~freshrec.stream.redislog.RedisLog` with streams
  ``NAME:p<i>`` (``NAME`` defaults to ``events``);
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

from freshrec.stream.base import Log
from freshrec.stream.config import FileLogConfig, KafkaLogConfig, RedisLogConfig

__all__ = ["open_log"]


def open_log(spec: str, *, partitions: int = 1, fsync: str = "interval") -> Log:
    """Open (creating when missing) the log named by ``spec`` (see the module docstring)."""
    if spec.startswith(("redis://", "unix://")):
        from freshrec.stream.redislog import RedisLog

        url, _, name = spec.partition("#")
        return RedisLog(RedisLogConfig(url=url, name=name or "events", partitions=partitions))
    if spec.startswith("kafka://"):
        from freshrec.stream.kafkalog import KafkaLog

        bootstrap, _, topic = spec[len("kafka://"):].partition("/")
        return KafkaLog(KafkaLogConfig(bootstrap=bootstrap, topic=topic or "events",
                                       partitions=partitions))
    from freshrec.stream.filelog import FileLog

    path = spec[len("file:"):] if spec.startswith("file:") else spec
    return FileLog(path, FileLogConfig(partitions=partitions, fsync=fsync))
