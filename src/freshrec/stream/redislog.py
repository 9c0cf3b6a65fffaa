"""Redis Streams log: one stream per partition, consumer groups, pending re-delivery, trimming.

Offsets are the stream entry ids packed into one int, ``ms << 20 | seq`` (strictly increasing,
not dense; good until the year 2248 and for fewer than 2**20 entries in one millisecond).
``read`` is ``XRANGE`` / ``XREAD BLOCK``; ``poll`` is ``XREADGROUP`` for the group, after
claiming (``XAUTOCLAIM``) entries that another consumer left pending for longer than
``claim_idle_s``; ``commit`` acknowledges (``XACK``) the group's pending entries below the
offset and stores the offset in the hash ``<name>:commits``; ``trim`` drops entries by count
(``MAXLEN``) or age (``MINID``); ``truncate`` deletes (``XDEL``) entries at and after an offset.

Examples
--------
A server is needed, so this example is not run here::

    log = RedisLog(RedisLogConfig(url="redis://127.0.0.1:6379/0", name="events"))
    offsets = log.append([b"a", b"b"])
    log.read(0, offsets[0])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from freshrec.errors import InputError
from freshrec.stream.base import Log, Record
from freshrec.stream.config import RedisLogConfig

__all__ = ["RedisLog", "offset_to_id", "id_to_offset"]

logger = logging.getLogger(__name__)

_SEQ_BITS = 20
_SEQ_MASK = (1 << _SEQ_BITS) - 1

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


def offset_to_id(offset: int) -> str:
    """Packed int offset -> ``"ms-seq"`` stream id."""
    return f"{offset >> _SEQ_BITS}-{offset & _SEQ_MASK}"


class RedisLog(Log):
    """:class:`~freshrec.stream.base.Log` over Redis Streams (see the module docstring).

    Parameters
    ----------
    config
        :class:`~freshrec.stream.config.RedisLogConfig`.
    """

    def __init__(self, config: RedisLogConfig) -> None:
        import redis

        self.config = config
        self.partitions = config.partitions
        self._r = redis.Redis.from_url(config.url)
        self._count_from = self._r.register_script(_COUNT_FROM)
        self._groups: set[tuple[str, int]] = set()

    def _key(self, partition: int) -> str:
        if not (isinstance(partition, int) and 0 <= partition < self.partitions):
            raise InputError(f"redis log {self.config.name!r}: partition must be in "
                             f"[0, {self.partitions}), got {partition!r}")
        return f"{self.config.name}:p{partition}"

    def append(self, records: Sequence[bytes], partition: int = 0) -> list[int]:
        key = self._key(partition)
        if not records:
            return []
        pipe = self._r.pipeline(transaction=False)
        kw = {}
        if self.config.max_len is not None:
            kw = {"maxlen": self.config.max_len, "approximate": True}
        for rec in records:
            if not isinstance(rec, bytes | bytearray | memoryview):
                raise InputError(f"redis log {self.config.name!r}: records must be bytes, "
                                 f"got {type(rec).__name__}")
            pipe.xadd(key, {b"v": bytes(rec)}, **kw)
        return [id_to_offset(i) for i in pipe.execute()]

    @staticmethod
    def _records(partition: int, entries: list) -> list[Record]:
        return [Record(partition, id_to_offset(i), f[b"v"]) for i, f in entries if f]

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
        return self._records(partition, res[0][1]) if res else []

    def end_offset(self, partition: int) -> int:
        last = self._r.xrevrange(self._key(partition), count=1)
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
        any consumer (``XAUTOCLAIM``), then new ones (``XREADGROUP``)."""
        key = self._ensure_group(group, partition)
        claimed = self._r.xautoclaim(key, group, consumer,
                                     min_idle_time=int(self.config.claim_idle_s * 1000),
                                     start_id="0-0", count=max_records)
        out = self._records(partition, claimed[1])
        if len(out) < max_records:
            block = int(timeout_s * 1000) if timeout_s > 0 and not out else None
            res = self._r.xreadgroup(group, consumer, {key: ">"},
                                     count=max_records - len(out), block=block)
            if res:
                out += self._records(partition, res[0][1])
        return sorted(out, key=lambda r: r.offset)

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
        self._r.hset(f"{self.config.name}:commits", f"{group}:{partition}", offset)

    def committed(self, group: str, partition: int) -> int:
        self._key(partition)
        v = self._r.hget(f"{self.config.name}:commits", f"{group}:{partition}")
        return int(v) if v is not None else 0

    def lag(self, group: str, partition: int | None = None) -> int:
        parts = range(self.partitions) if partition is None else [partition]
        total = 0
        for p in parts:
            start = offset_to_id(max(self.committed(group, p), 1))
            total += int(self._count_from(keys=[self._key(p)], args=[start]))
        return total

    def truncate(self, partition: int, offset: int) -> None:
        key = self._key(partition)
        while True:
            ids = [i for i, _ in self._r.xrange(key, min=offset_to_id(max(offset, 1)),
                                                 count=10000)]
            if not ids:
                return
            self._r.xdel(key, *ids)

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

    def delete(self) -> None:
        """Remove every stream and the commit hash of this log."""
        self._r.delete(*[self._key(p) for p in range(self.partitions)],
                       f"{self.config.name}:commits")
        self._groups.clear()

    def close(self) -> None:
        self._r.close()

    def __repr__(self) -> str:
        return f"RedisLog(name={self.config.name!r}, partitions={self.partitions})"
