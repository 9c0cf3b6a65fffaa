"""Rows of one table in Redis: keys, packed values, batched reads and writes, TTL, expiry count.

Layout
------
A row of table ``T`` under prefix ``P`` is the string key ``P:T:FID`` (the fid in decimal)
whose value is the row's float32s, little-endian, packed end to end (``width * 4`` bytes;
the trainer stores the row followed by its optimizer state). With a TTL, each write sets it
again (``SET ... PX``), so a row expires once it has not been written for ``ttl_s``.

To count the rows Redis expired, each write also records the fid with the write time in one
of 16 sorted sets ``{P:T:seen:B}`` (``B = fid % 16``; the braces keep each set in one hash
slot and spread the 16 over a cluster's nodes). :meth:`RowStore.sweep` takes the fids whose
last write is older than the TTL, checks they are gone, counts and forgets them.

Round trips
-----------
Reads are ``MGET`` of up to ``batch_keys`` keys (on a Redis Cluster split by hash slot and
sent as one pipeline per node: ``mget_nonatomic``; serving's reads from one server go
through the lean :class:`~freshrec.store.wire.WireClient`); writes are one non-transactional
pipeline of ``SET``\\ s per ``batch_keys`` rows (a cluster pipeline splits it per node). No
operation sends one round trip per fid.

A value of the wrong length or with a NaN/inf is counted in :attr:`RowStore.bad` and read
as missing.

Examples
--------
>>> keys = RowKeys("freshrec", "user")
>>> keys.row(7), keys.seen(7)
(b'freshrec:user:7', b'{freshrec:user:seen:7}')
>>> pack_rows(np.array([[1.0, 2.0]], np.float32))[0]
b'\\x00\\x00\\x80?\\x00\\x00\\x00@'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from freshrec.stream._redis import connect

if TYPE_CHECKING:
    from freshrec.store.wire import WireClient
    from freshrec.stream._redis import Client

__all__ = ["RowKeys", "RowStore", "pack_rows", "open_client"]

log = logging.getLogger(__name__)

SEEN_BUCKETS = 16
_LE_F32 = np.dtype("<f4")


@dataclass(frozen=True)
class RowKeys:
    """The keys of table ``table`` under ``prefix`` (see the module docstring)."""

    prefix: str
    table: str

    @property
    def base(self) -> bytes:
        """``P:T:``, the part before the fid."""
        return f"{self.prefix}:{self.table}:".encode()

    def row(self, fid: int) -> bytes:
        """The key of the row of ``fid``."""
        return self.base + str(fid).encode()

    def rows(self, fids: npt.NDArray[np.uint64]) -> list[bytes]:
        """The keys of ``fids``, in order."""
        b = self.base
        return [b + str(f).encode() for f in fids.tolist()]

    def seen(self, bucket: int) -> bytes:
        """The sorted set of fid -> last write time of fids with ``fid % 16 == bucket``."""
        return f"{{{self.prefix}:{self.table}:seen:{bucket}}}".encode()


def pack_rows(values: npt.NDArray[np.float32]) -> list[bytes]:
    """Each row of a 2-d float32 array as little-endian bytes."""
    v = np.ascontiguousarray(values, dtype=_LE_F32)
    raw = v.tobytes()
    step = v.shape[1] * 4
    return [raw[i : i + step] for i in range(0, len(raw), step)]


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def open_client(url: str, name: str, timeout_s: float | None = None) -> Client:
    """A client for ``url`` (:func:`freshrec.stream._redis.connect`), with socket timeouts of
    ``timeout_s`` on every connection it opens (None: block)."""
    client = connect(url, name)
    if timeout_s is not None:
        set_timeout(client, timeout_s)
    return client


def set_timeout(client: Client, timeout_s: float) -> None:
    """Make the connections ``client`` opens from now on time out after ``timeout_s``, and
    the ones it holds at their next use (a cluster client: on each node)."""
    pools = []
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:
        manager.connection_kwargs.update(socket_timeout=timeout_s,
                                         socket_connect_timeout=timeout_s)
        pools = [n.redis_connection.connection_pool for n in client.get_nodes()  # type: ignore[union-attr]
                 if n.redis_connection is not None]
    else:
        pools = [client.connection_pool]  # type: ignore[union-attr]
    for pool in pools:
        pool.connection_kwargs.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        for conn in list(getattr(pool, "_available_connections", [])):
            conn.socket_timeout = timeout_s
            conn.socket_connect_timeout = timeout_s


class RowStore:
    """Batched reads and writes of one table's packed rows in Redis.

    Parameters
    ----------
    client : redis.Redis, RedisCluster or WireClient
        From :func:`open_client`; a :class:`~freshrec.store.wire.WireClient` reads only
        (:meth:`get`).
    keys : RowKeys
    width : int
        Floats per value (row, plus optimizer state when the trainer stores it).
    ttl_ms : int or None
        TTL set again on every write.
    batch_keys : int
        Keys per round trip.
    """

    def __init__(self, client: Client | WireClient, keys: RowKeys, width: int, *, ttl_ms: int | None = None,
                 batch_keys: int = 2000) -> None:
        self.client = client
        self.keys = keys
        self.width = width
        self.ttl_ms = ttl_ms
        self.batch_keys = batch_keys
        self._cluster = hasattr(client, "nodes_manager")
        #: Values found with the wrong length or a NaN/inf (read as missing).
        self.bad = 0
        #: Rows read, rows found, rows written, rows counted as expired by :meth:`sweep`.
        self.read = 0
        self.found = 0
        self.written = 0
        self.expired = 0

    def get(self, fids: npt.NDArray[np.uint64]) -> tuple[np.ndarray, np.ndarray]:
        """``(values (n, width) float32, found (n,) bool)``; missing and bad rows: zeros, False.

        Raises the client's error when Redis cannot be reached (the caller decides).
        """
        n = fids.shape[0]
        out = np.zeros((n, self.width), np.float32)
        found = np.zeros(n, bool)
        size = self.width * 4
        for sl in _chunks(n, self.batch_keys):
            keys = self.keys.rows(fids[sl])
            raw: Sequence[Any] = (self.client.mget_nonatomic(keys)  # type: ignore[union-attr]
                                  if self._cluster else self.client.mget(keys))
            for i, v in enumerate(raw, start=sl.start):
                if v is None:
                    continue
                if len(v) != size:
                    self._bad(int(fids[i]), f"{len(v)} bytes, expected {size}")
                    continue
                row = np.frombuffer(v, _LE_F32)
                if not np.isfinite(row).all():
                    self._bad(int(fids[i]), "a NaN or inf")
                    continue
                out[i] = row
                found[i] = True
        self.read += n
        self.found += int(found.sum())
        return out, found

    @property
    def _writer(self) -> Client:
        from freshrec.store.wire import WireClient

        if isinstance(self.client, WireClient):
            raise TypeError(f"RowStore {self.keys.table!r}: a WireClient only reads")
        return self.client

    def _bad(self, fid: int, what: str) -> None:
        self.bad += 1
        log.warning("store table=%s fid=%d: value in Redis has %s; read as missing",
                    self.keys.table, fid, what)

    def put(self, fids: npt.NDArray[np.uint64], values: npt.NDArray[np.float32],
            now: float | None = None) -> None:
        """Write rows (``values``: (n, width)); sets the TTL again and records the write time
        (``now``, wall-clock seconds; default the current time) for :meth:`sweep`."""
        if values.shape != (fids.shape[0], self.width):
            raise ValueError(f"RowStore {self.keys.table!r}.put: values must have shape "
                             f"({fids.shape[0]}, {self.width}), got {values.shape}")
        t = time.time() if now is None else now
        for sl in _chunks(fids.shape[0], self.batch_keys):
            f = fids[sl]
            pipe = self._writer.pipeline(transaction=False)
            for key, val in zip(self.keys.rows(f), pack_rows(values[sl]), strict=True):
                pipe.set(key, val, px=self.ttl_ms)
            if self.ttl_ms is not None:
                buckets = (f % np.uint64(SEEN_BUCKETS)).astype(np.int64)
                for b in np.unique(buckets).tolist():
                    members = f[buckets == b].tolist()
                    pipe.zadd(self.keys.seen(b), dict.fromkeys(map(str, members), t))
            pipe.execute()
        self.written += int(fids.shape[0])

    def delete(self, fids: npt.NDArray[np.uint64]) -> None:
        """Remove rows (tests and tools; the trainer never deletes: TTLs do)."""
        pipe = self._writer.pipeline(transaction=False)
        for key in self.keys.rows(fids):
            pipe.delete(key)
        pipe.execute()

    def sweep(self, now: float | None = None) -> int:
        """Count the rows Redis expired: fids last written more than the TTL before ``now``
        (wall-clock seconds) whose key is gone; they are forgotten, and the count is added to
        :attr:`expired` and returned. Without a TTL nothing expires: 0."""
        if self.ttl_ms is None:
            return 0
        t = time.time() if now is None else now
        cutoff = t - self.ttl_ms / 1000.0
        gone_total = 0
        for b in range(SEEN_BUCKETS):
            zkey = self.keys.seen(b)
            old: list[bytes] = list(self._writer.zrangebyscore(zkey, "-inf", cutoff))  # type: ignore[arg-type]
            if not old:
                continue
            fids = np.array([int(x) for x in old], np.uint64)
            exists: list[int] = []
            for sl in _chunks(fids.shape[0], self.batch_keys):
                pipe = self._writer.pipeline(transaction=False)
                for key in self.keys.rows(fids[sl]):
                    pipe.exists(key)
                exists += pipe.execute()
            gone = [m for m, e in zip(old, exists, strict=True) if not e]
            if gone:
                self._writer.zrem(zkey, *gone)
                gone_total += len(gone)
        self.expired += gone_total
        return gone_total

    def stats(self) -> dict[str, int]:
        """Counters: ``read``, ``found``, ``bad``, ``written``, ``expired``."""
        return {"read": self.read, "found": self.found, "bad": self.bad,
                "written": self.written, "expired": self.expired}
