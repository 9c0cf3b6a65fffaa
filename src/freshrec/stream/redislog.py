"""Redis Streams log: one stream per partition, consumer groups, pending re-delivery, trimming.

The log runs on one server (``redis://``, ``unix://``) or on a Redis Cluster
(``redis+cluster://HOST:PORT/0``, any node as the seed). Its keys carry one hash tag per
partition (``{NAME:p<i>}`` is the stream of partition ``i``; its commits and append tokens
share that tag), so every command and script of an operation stays within one hash slot and
the partitions spread over the nodes of a cluster; see :mod:`freshrec.stream._redis`.

Offsets are the stream entry ids packed into one int, ``ms << 20 | seq`` (strictly increasing,
not dense; good until the year 2248 and for fewer than 2**20 entries in one millisecond).
``read`` is ``XRANGE`` / ``XREAD BLOCK``; ``poll`` is ``XREADGROUP`` for the group, after
claiming (``XAUTOCLAIM``) entries that another consumer left pending for longer than
``claim_idle_s``; ``commit`` acknowledges (``XACK``) the group's pending entries below the
offset and stores the offset in the partition's hash ``{NAME:p<i>}:commits``; ``trim`` drops
entries by count (``MAXLEN``) or age (``MINID``); ``truncate`` deletes (``XDEL``) entries at
and after an offset.

A lost server (connection refused or dropped, timeout, a restarted server still loading its
data; on a cluster also CLUSTERDOWN and TRYAGAIN, the client refreshing its slot map after
each) does not fail an operation at once: it is retried with exponential back-off for up to
``retry_s`` seconds in all, each retry logged and counted in :attr:`RedisLog.reconnects`, so
a Redis restart is a pause for every stage that uses the log. Retried operations are safe:

- ``append`` is idempotent. One call adds its records in one server-side script that also
  stores a token unique to the call (key ``{NAME:p<i>}:append:<writer>:<n>``, expiring
  ``retry_s`` + 60 s later); a retry of a call whose reply was lost finds the token and
  returns the offsets the records got instead of adding them again.
- ``read``, ``end_offset``, ``commit``, ``committed``, ``lag``, ``truncate`` and ``delete``
  are idempotent; ``trim`` too (its count may then miss what the lost attempt removed).
- ``poll`` is at least once: its retry starts with the entries pending on the consumer,
  among them those whose delivery reply was lost, and also those delivered before and not
  yet committed (consumers dedupe, as the joiner does by event id).

Examples
--------
A server is needed, so this example is not run here::

    log = RedisLog(RedisLogConfig(url="redis://127.0.0.1:6379/0", name="events"))
    offsets = log.append([b"a", b"b"])
    log.read(0, offsets[0])
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from freshrec._retry import Backoff
from freshrec.errors import InputError
from freshrec.stream._redis import RedisKeys, connect, is_lost, scheme_checked
from freshrec.stream.base import Log, Record
from freshrec.stream.config import RedisLogConfig

__all__ = ["RedisLog", "offset_to_id", "id_to_offset"]

logger = logging.getLogger(__name__)

_SEQ_BITS = 20
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_P = ParamSpec("_P")
_T = TypeVar("_T")

# adds ARGV[3..] to stream KEYS[1] (MAXLEN ~ ARGV[1] unless empty) once per token KEYS[2]:
# the token keeps "first-id last-id" for ARGV[2] ms, and a repeated call returns those ids
_APPEND_ONCE = """
local done = redis.call('GET', KEYS[2])
if done then
  local first, last = string.match(done, '^(%S+) (%S+)$')
  local ids = {}
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], first, last)) do ids[#ids + 1] = e[1] end
  return ids
end
local ids = {}
for i = 3, #ARGV do
  if ARGV[1] == '' then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'v', ARGV[i])
  else
    ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'v', ARGV[i])
  end
end
redis.call('SET', KEYS[2], ids[1] .. ' ' .. ids[#ids], 'PX', ARGV[2])
return ids
"""

# counts the entries of a stream at or after an id, in chunks, on the server
_COUNT_FROM = """
local n = 0
local start = ARGV[1]
while true do
  local r = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 10000)
  n = n + #r
  if #r < 10000 then return n end
  start = '(' .. r[#r][1]
end
"""


def id_to_offset(entry_id: bytes | str) -> int:
    """``b"1700000000000-3"`` -> packed int offset.

    Examples
    --------
    >>> id_to_offset(b"5-3"), offset_to_id(id_to_offset("5-3"))
    (5242883, '5-3')
    """
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = s.split("-")
    return (int(ms) << _SEQ_BITS) | int(seq)


def _foreign(entry_id: bytes | str, fields: dict[bytes, bytes]) -> bytes:
    """The record of a stream entry without the ``v`` field (written by another client).

    >>> _foreign(b"5-3", {b"data": b"x"})
    b"redis stream entry 5-3 has no field 'v' (its fields: data)"
    """
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    names = ", ".join(k.decode("utf-8", "replace") for k in list(fields)[:8])
    return f"redis stream entry {eid} has no field 'v' (its fields: {names})".encode()


def offset_to_id(offset: int) -> str:
    """Packed int offset -> ``"ms-seq"`` stream id."""
    return f"{offset >> _SEQ_BITS}-{offset & _SEQ_MASK}"


def _retried(
    method: Callable[Concatenate[RedisLog, _P], _T],
) -> Callable[Concatenate[RedisLog, _P], _T]:
    """Run a :class:`RedisLog` operation through :meth:`RedisLog._call` (retries)."""

    @functools.wraps(method)
    def call(self: RedisLog, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._call(method.__name__, lambda: method(self, *args, **kwargs))

    return call


class RedisLog(Log):
    """:class:`~freshrec.stream.base.Log` over Redis Streams (see the module docstring).

    Parameters
    ----------
    config
        :class:`~freshrec.stream.config.RedisLogConfig`.
    """

    def __init__(self, config: RedisLogConfig) -> None:
        self.config = config
        self.partitions = config.partitions
        #: The names of the log's keys.
        self.keys = RedisKeys(config.name)
        #: Operations retried after losing the server (see the module docstring).
        self.reconnects = 0
        self._inside = threading.local()
        self._groups: set[tuple[str, int]] = set()
        self._writer = uuid.uuid4().hex[:16]
        self._appends = itertools.count()
        # the client's own retries are off: _call retries, logs and counts instead (a
        # cluster client fetches its slot map here, so a lost seed node is retried too)
        self._r = self._call("connect", lambda: connect(config.url, config.name))
        self._count_from = self._r.register_script(_COUNT_FROM)
        self._append_once = self._r.register_script(_APPEND_ONCE)

    def _call(self, op: str, fn: Callable[[], _T]) -> _T:
        """``fn()``, retried with back-off while the server is lost, up to ``retry_s``.

        Operations called inside another one (``commit`` reads ``committed``) run once: the
        outermost retries. A URL of the wrong scheme (a cluster node as ``redis://``, a
        server as ``redis+cluster://``) is a :class:`ConfigError`.
        """
        if getattr(self._inside, "active", False):
            return fn()
        self._inside.active = True
        backoff = Backoff()
        deadline = time.monotonic() + self.config.retry_s
        tries = 0
        try:
            while True:
                try:
                    with scheme_checked(self.config.url, self.config.name):
                        result = fn()
                except Exception as e:
                    if not is_lost(e):
                        raise
                    delay = backoff.next()
                    if time.monotonic() + delay > deadline:
                        raise
                    tries += 1
                    self.reconnects += 1
                    logger.warning("redis log %r: %s lost the server (%s: %s); retry %d in "
                                   "%.2fs", self.config.name, op, type(e).__name__, e, tries,
                                   delay)
                    time.sleep(delay)
                    continue
                if tries:
                    logger.info("redis log %r: %s succeeded after %d retries",
                                self.config.name, op, tries)
                return result
        finally:
            self._inside.active = False

    def _key(self, partition: int) -> str:
        if not (isinstance(partition, int) and 0 <= partition < self.partitions):
            raise InputError(f"redis log {self.config.name!r}: partition must be in "
                             f"[0, {self.partitions}), got {partition!r}")
        return self.keys.stream(partition)

    def append(self, records: Sequence[bytes], partition: int = 0) -> list[int]:
        """Append ``records`` (once, even when retried; see the module docstring)."""
        key = self._key(partition)
        if not records:
            return []
        for rec in records:
            if not isinstance(rec, bytes | bytearray | memoryview):
                raise InputError(f"redis log {self.config.name!r}: records must be bytes, "
                                 f"got {type(rec).__name__}")
        token = self.keys.token(partition, self._writer, next(self._appends))
        max_len = "" if self.config.max_len is None else str(self.config.max_len)
        ttl_ms = int((self.config.retry_s + 60) * 1000)
        args: list[bytes | str | int] = [max_len, ttl_ms, *(bytes(r) for r in records)]
        ids = self._call("append", lambda: self._append_once(keys=[key, token], args=args))
        return [id_to_offset(i) for i in ids]

    @staticmethod
    def _records(partition: int, entries: Any) -> list[Record]:
        """Records of the stream entries ``[(id, {b"v": value}), ...]`` the client returns (a
        deleted entry still pending in a group comes without fields and is skipped). An
        entry another writer added without a ``v`` field is a record saying so (not JSON:
        a joiner dead-letters it with that text), not an error that stops every reader at
        that entry."""
        return [Record(partition, id_to_offset(i),
                       v if (v := f.get(b"v")) is not None else _foreign(i, f))
                for i, f in entries or () if f]

    @staticmethod
    def _only_stream(reply: Any) -> Any:
        """The entries of the one stream in an ``XREAD``/``XREADGROUP`` reply."""
        return reply[0][1] if reply else []

    @_retried
    def read(
        self, partition: int, offset: int, max_records: int = 1000, timeout_s: float = 0.0
    ) -> list[Record]:
        key = self._key(partition)
        start = offset_to_id(max(offset, 1))
        out = self._records(partition, self._r.xrange(key, min=start, count=max_records))
        if out or timeout_s <= 0:
            return out
        after = offset_to_id(max(offset - 1, 0))
        res = self._r.xread({key: after}, count=max_records, block=max(1, int(timeout_s * 1000)))
        return self._records(partition, self._only_stream(res))

    @_retried
    def end_offset(self, partition: int) -> int:
        last: Any = self._r.xrevrange(self._key(partition), count=1)
        return id_to_offset(last[0][0]) + 1 if last else 0

    def _ensure_group(self, group: str, partition: int) -> str:
        key = self._key(partition)
        if (group, partition) not in self._groups:
            import redis

            start = offset_to_id(max(self.committed(group, partition) - 1, 0))
            try:
                self._r.xgroup_create(key, group, id=start, mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
            self._groups.add((group, partition))
        return key

    def poll(
        self,
        group: str,
        partition: int,
        max_records: int = 1000,
        timeout_s: float = 0.0,
        consumer: str = "c0",
    ) -> list[Record]:
        """Next entries for ``group``: first those pending for longer than ``claim_idle_s`` on
        any consumer (``XAUTOCLAIM``), then new ones (``XREADGROUP``).

        A retry after losing the server starts with every entry pending on ``consumer``
        (delivered, not committed), so entries whose delivery reply was lost come at once.
        """
        attempts = itertools.count()
        return self._call("poll", lambda: self._poll(group, partition, max_records, timeout_s,
                                                     consumer, retry=next(attempts) > 0))

    def _poll(self, group: str, partition: int, max_records: int, timeout_s: float,
              consumer: str, *, retry: bool) -> list[Record]:
        key = self._ensure_group(group, partition)
        out: dict[int, Record] = {}

        def add(entries: Any) -> None:
            out.update((r.offset, r) for r in self._records(partition, entries))

        if retry:
            add(self._only_stream(self._r.xreadgroup(group, consumer, {key: "0"},
                                                     count=max_records)))
        if len(out) < max_records:
            claimed: Any = self._r.xautoclaim(key, group, consumer,
                                              min_idle_time=int(self.config.claim_idle_s * 1000),
                                              start_id="0-0", count=max_records - len(out))
            add(claimed[1])
        if len(out) < max_records:
            block = int(timeout_s * 1000) if timeout_s > 0 and not out else None
            add(self._only_stream(self._r.xreadgroup(group, consumer, {key: ">"},
                                                     count=max_records - len(out), block=block)))
        return sorted(out.values(), key=lambda r: r.offset)

    @_retried
    def commit(self, group: str, partition: int, offset: int) -> None:
        key = self._ensure_group(group, partition)
        last = offset_to_id(max(offset - 1, 0))
        while True:
            pend = self._r.xpending_range(key, group, min="-", max=last, count=10000)
            if not pend:
                break
            self._r.xack(key, group, *[p["message_id"] for p in pend])
            if len(pend) < 10000:
                break
        self._r.hset(self.keys.commits(partition), group, offset)

    @_retried
    def committed(self, group: str, partition: int) -> int:
        self._key(partition)
        key = self.keys.commits(partition)
        v = self._r.hget(key, group)
        if v is None:
            return 0
        if not v.isdigit():  # written by another client (one of ours is an int >= 0)
            raise InputError(f"redis log {self.config.name!r}: the position of consumer group "
                             f"{group!r} in partition {partition} (hash {key!r}, field "
                             f"{group!r}) is not an offset >= 0: {v[:80]!r} (damaged: restore "
                             f"it, or HDEL it to read the partition from its start)")
        return int(v)

    @_retried
    def count_from(self, partition: int, offset: int) -> int:
        """Entries at or after ``offset``, counted on the server (offsets are sparse)."""
        key = self._key(partition)
        return int(self._count_from(keys=[key], args=[offset_to_id(max(offset, 1))]))

    @_retried
    def lag(self, group: str, partition: int | None = None) -> int:
        parts = range(self.partitions) if partition is None else [partition]
        return sum(self.count_from(p, self.committed(group, p)) for p in parts)

    @_retried
    def truncate(self, partition: int, offset: int) -> None:
        key = self._key(partition)
        while True:
            entries: Any = self._r.xrange(key, min=offset_to_id(max(offset, 1)), count=10000)
            ids = [i for i, _ in entries]
            if not ids:
                return
            self._r.xdel(key, *ids)

    @_retried
    def trim(self, partition: int, *, max_len: int | None = None,
             older_than_s: float | None = None, now_s: float | None = None) -> int:
        """Drop the oldest entries beyond ``max_len`` and/or those appended more than
        ``older_than_s`` before ``now_s`` (server append time; default: now). Returns how
        many were removed."""
        key = self._key(partition)
        removed = 0
        if max_len is not None:
            removed += int(self._r.xtrim(key, maxlen=max_len, approximate=False))
        if older_than_s is not None:
            now = time.time() if now_s is None else now_s
            min_id = f"{int((now - older_than_s) * 1000)}-0"
            removed += int(self._r.xtrim(key, minid=min_id, approximate=False))
        return removed

    @_retried
    def delete(self) -> None:
        """Remove the stream and the commits of every partition (one slot at a time)."""
        for p in range(self.partitions):
            self._r.delete(self.keys.stream(p), self.keys.commits(p))
        self._groups.clear()

    def close(self) -> None:
        self._r.close()

    def __repr__(self) -> str:
        return f"RedisLog(name={self.config.name!r}, partitions={self.partitions})"
