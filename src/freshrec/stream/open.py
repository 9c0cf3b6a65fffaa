"""Open a log from a one-line spec, as the CLI and the benchmarks name them.

- ``file:PATH`` (or a bare path): :class:`~freshrec.stream.filelog.FileLog`;
- ``redis://HOST:PORT/DB#NAME`` (or ``unix://PATH#NAME``) on one server, or
  ``redis+cluster://HOST:PORT/0#NAME`` on a Redis Cluster (``HOST:PORT`` is any node; the
  client finds the others): :class:`~freshrec.stream.redislog.RedisLog` with streams
  ``{NAME:p<i>}``, spread over the nodes of a cluster (``NAME`` defaults to ``events``). A
  ``redis://`` URL of a cluster node is refused with a message (the node answers MOVED).
  The number of partitions is kept in the key ``NAME:partitions``; opened without
  ``partitions``, a log has as many as that key (or its highest existing stream) says, so a
  reader never silently skips a partition; asking for more partitions than a log that holds
  records has is refused (keys would re-route), and so are streams in the key layout before
  hash tags (``NAME:p<i>``);
- ``kafka://BOOTSTRAP/TOPIC``: :class:`~freshrec.stream.kafkalog.KafkaLog` (``TOPIC``
  defaults to ``events``).

Each spec prefix maps to one opener in :data:`LOG_BACKENDS`. The backend modules import
without their client libraries; the Redis and Kafka clients (the ``redis`` and ``kafka``
extras) are imported only when such a log is opened, and a missing one is a
:class:`~freshrec.errors.ConfigError` naming the extra.

Examples
--------
>>> import tempfile
>>> log = open_log("file:" + tempfile.mkdtemp(), partitions=2)
>>> log.partitions
2
>>> log.close()
>>> sorted(LOG_BACKENDS)
['file:', 'kafka://', 'redis+cluster://', 'redis://', 'unix://']
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping

from freshrec.errors import InputError
from freshrec.stream._redis import CLUSTER_SCHEME, RedisKeys, connect, scheme_checked
from freshrec.stream.base import Log
from freshrec.stream.config import FileLogConfig, KafkaLogConfig, RedisLogConfig
from freshrec.stream.filelog import FileLog
from freshrec.stream.kafkalog import KafkaLog
from freshrec.stream.redislog import RedisLog

__all__ = ["open_log", "LOG_BACKENDS"]

#: ``opener(spec, partitions, fsync) -> Log``: opens the log a spec names.
LogOpener = Callable[[str, int | None, str], Log]


def _open_file(spec: str, partitions: int | None, fsync: str) -> FileLog:
    """A :class:`FileLog` at ``file:PATH`` (or a bare ``PATH``)."""
    path = spec.removeprefix("file:")
    return FileLog(path, FileLogConfig(partitions=partitions or 1, fsync=fsync))


def _open_redis(spec: str, partitions: int | None, fsync: str) -> RedisLog:
    """A :class:`RedisLog` at ``redis://...#NAME`` or ``redis+cluster://...#NAME``
    (``fsync`` is the server's business)."""
    url, _, name = spec.partition("#")
    config = RedisLogConfig(url=url, name=name or "events")  # checks both before connecting
    n = _redis_partitions(url, config.name, partitions)
    return RedisLog(dataclasses.replace(config, partitions=n))


def _open_kafka(spec: str, partitions: int | None, fsync: str) -> KafkaLog:
    """A :class:`KafkaLog` at ``kafka://BOOTSTRAP/TOPIC`` (``fsync`` is the broker's)."""
    bootstrap, _, topic = spec.removeprefix("kafka://").partition("/")
    return KafkaLog(KafkaLogConfig(bootstrap=bootstrap, topic=topic or "events",
                                   partitions=partitions or 1))


#: The log backends by spec prefix; a spec with none of them is a file log's path.
LOG_BACKENDS: Mapping[str, LogOpener] = {
    "file:": _open_file,
    "redis://": _open_redis,
    CLUSTER_SCHEME: _open_redis,
    "unix://": _open_redis,
    "kafka://": _open_kafka,
}


def open_log(spec: str, *, partitions: int | None = None, fsync: str = "interval") -> Log:
    """Open (creating when missing) the log named by ``spec`` (see the module docstring).

    Parameters
    ----------
    spec : str
        ``file:PATH`` or a bare path, ``redis://HOST:PORT/DB#NAME``, ``unix://PATH#NAME``,
        ``redis+cluster://HOST:PORT/0#NAME`` or ``kafka://BOOTSTRAP/TOPIC``.
    partitions : int, optional
        How many partitions the log has; None takes an existing log's own (1 for a new one).
    fsync : str
        The file log's ``fsync`` policy (:class:`~freshrec.stream.config.FileLogConfig`).

    Returns
    -------
    Log

    Raises
    ------
    InputError
        A Redis log asked for fewer partitions than it has, or for more while it holds
        records, or holding streams in the layout before hash tags.
    ConfigError
        The client of the backend is not installed, or a ``redis://`` URL names a node of a
        Redis Cluster.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "events")
    >>> log = open_log(path)              # a bare path: a file log
    >>> type(log).__name__, log.partitions
    ('FileLog', 1)
    >>> log.close()
    """
    for prefix, opener in LOG_BACKENDS.items():
        if spec.startswith(prefix):
            return opener(spec, partitions, fsync)
    return _open_file(spec, partitions, fsync)


def _redis_partitions(url: str, name: str, asked: int | None) -> int:
    """The partitions of the Redis log ``name``: recorded in ``NAME:partitions`` (and at
    least one past its highest stream); records ``asked`` for a new log."""
    keys = RedisKeys(name)
    with scheme_checked(url, name), contextlib.closing(connect(url, name)) as r:
        stored = r.get(keys.partitions)
        have = int(stored) if stored is not None else 0
        legacy: list[str] = []
        for raw in r.scan_iter(match=keys.scan_pattern, count=1000, _type="stream"):
            key = raw.decode(errors="replace")
            p = keys.partition_of(key)
            if p is not None:
                have = max(have, p + 1)
            elif keys.legacy_partition_of(key) is not None:
                legacy.append(key)
        if legacy:
            raise InputError(f"redis log {name!r} at {url} has streams in the key layout "
                             f"before hash tags ({', '.join(sorted(legacy))}); this version "
                             f"reads {keys.stream(0)}, ... Rename each (RENAME {name}:p0 "
                             f"{keys.stream(0)}) or write to a new log")
        if asked is not None and asked < have:
            raise InputError(f"redis log {name!r} at {url} has {have} partitions; asked for "
                             f"{asked}, which would skip {have - asked} of them")
        n = asked or have or 1
        if have and n > have and any(r.xlen(keys.stream(p)) for p in range(have)):
            raise InputError(f"redis log {name!r} at {url} has {have} partitions and holds "
                             f"records; growing it to {n} would route keys to other "
                             f"partitions than before. Write to a new log instead")
        if n > have or stored is None:
            r.set(keys.partitions, n)
        return n
