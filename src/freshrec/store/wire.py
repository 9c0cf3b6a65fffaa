"""A lean Redis client for serving's one read per request: ``MGET`` over one socket.

Serving reads a user's rows from Redis on the request's path, so the round trip is what a
request pays. :class:`WireClient` sends that one command with less in the way than
redis-py: one persistent socket (``TCP_NODELAY``), the command built as RESP bytes in one
``send``, a small reader for the reply (an array of bulk strings) and no connection pool
or health checks. Its wait for the reply is *hybrid*: it first polls the socket without
blocking for up to ``spin_us`` microseconds (the reply of a loopback or same-rack server
usually arrives within that time, and a thread that never slept needs no wake-up), then
blocks in ``poll`` for the rest of the budget. Between polls it yields the CPU
(``sched_yield``): a redis-server woken on the same CPU runs at once instead of waiting
for the spin to end (without the yield, about 1 % of loopback replies waited out the whole
spin). The spin costs at most ``spin_us`` of CPU per request (``spin_us=0``: always
block).

It speaks to one server (``redis://`` and ``unix://`` URLs, with the URL's password,
user and database); TLS (``rediss://``) and Redis Cluster stay with redis-py, whose
cluster client routes each key to its node (see :func:`freshrec.store.served.read_client`).
A cluster node answers a key of another node's slot with ``MOVED``, raised here as
redis-py's :class:`~redis.exceptions.MovedError`.

Time budget
-----------
Each :meth:`WireClient.mget` has ``timeout_s`` in all: (re)connecting, sending and
reading. Past it, or when the connection fails, it raises redis-py's
:class:`~redis.exceptions.TimeoutError` or :class:`~redis.exceptions.ConnectionError`
(:func:`freshrec.stream._redis.is_lost` is true for both) and closes the socket, so that a
late reply is never read as the answer to the next command; the next call connects again.
Threads share the connection in turns (a lock, whose wait counts against the budget); a
forked child opens its own.

Examples
--------
>>> command(b"MGET", [b"a", b"bc"])
b'*3\\r\\n$4\\r\\nMGET\\r\\n$1\\r\\na\\r\\n$2\\r\\nbc\\r\\n'
>>> parse_reply(bytearray(b"*3\\r\\n$2\\r\\nhi\\r\\n$-1\\r\\n$0\\r\\n\\r\\n"))
([b'hi', None, b''], 23)
>>> parse_reply(bytearray(b"*2\\r\\n$2\\r\\nhi\\r\\n")) is None     # incomplete: read on
True
"""

from __future__ import annotations

import math
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_SPIN_US", "WIRE_SCHEMES", "WireClient", "command", "parse_reply"]

#: Microseconds a read polls without blocking before it sleeps in ``poll`` (measured in
#: docs/store.md, "Serving latency").
DEFAULT_SPIN_US = 100
#: URL schemes :class:`WireClient` serves; others go through redis-py.
WIRE_SCHEMES = ("redis://", "unix://")
_CHUNK = 1 << 18


def command(name: bytes, args: Sequence[bytes]) -> bytes:
    """The RESP encoding of the command ``name`` with ``args`` (an array of bulk strings)."""
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(name), name)]
    parts += [b"$%d\r\n%s\r\n" % (len(a), a) for a in args]
    return b"".join(parts)


class _Incomplete(Exception):
    pass


def _line(buf: bytearray, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    return bytes(buf[pos:end]), end + 2


def _value(buf: bytearray, pos: int) -> tuple[Any, int]:
    if pos >= len(buf):
        raise _Incomplete
    kind = buf[pos]
    line, pos = _line(buf, pos + 1)
    if kind == 0x24:  # $ bulk string
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + n]), pos + n + 2
    if kind == 0x2A:  # * array
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _value(buf, pos)
            items.append(item)
        return items, pos
    if kind == 0x2B:  # + simple string
        return line, pos
    if kind == 0x3A:  # : integer
        return int(line), pos
    if kind == 0x2D:  # - error
        return _error(line.decode("utf-8", "replace")), pos
    raise ValueError(f"Redis reply: unknown type byte {chr(kind)!r}")


def parse_reply(buf: bytearray) -> tuple[Any, int] | None:
    """``(value, bytes used)`` of the first whole RESP2 reply in ``buf``, or None while it
    is incomplete. Bulk strings are bytes (None for nil), arrays lists, an error reply a
    redis-py exception instance (not raised)."""
    try:
        return _value(buf, 0)
    except _Incomplete:
        return None


def _error(message: str) -> Exception:
    """redis-py's exception for an error reply (``LOADING``, ``MOVED``, ``ASK``, ...)."""
    from redis import exceptions as x

    code, _, rest = message.partition(" ")
    if code == "MOVED":
        return x.MovedError(rest)
    if code == "ASK":
        return x.AskError(rest)
    if code == "LOADING":
        return x.BusyLoadingError(message)
    if code == "NOAUTH" or code == "WRONGPASS":
        return x.AuthenticationError(message)
    return x.ResponseError(message)


class WireClient:
    """One connection to one Redis server for batched reads (see the module docstring).

    Parameters
    ----------
    url : str
        ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` or ``unix://PATH[?db=N]``.
    timeout_s : float
        Budget of each call: connect (when needed), send, read.
    spin_us : float
        Polling without blocking before sleeping, per read (0: block at once).

    Examples
    --------
    >>> c = WireClient("redis://127.0.0.1:1/0", timeout_s=0.05)   # nothing listens there
    >>> c.mget([b"k"])
    Traceback (most recent call last):
    ...
    redis.exceptions.ConnectionError: Redis at redis://127.0.0.1:1/0: connecting: [Errno 111] Connection refused
    >>> c.close()
    """

    def __init__(self, url: str, *, timeout_s: float, spin_us: float = DEFAULT_SPIN_US) -> None:
        from redis.connection import parse_url

        if not url.startswith(WIRE_SCHEMES):
            raise ValueError(f"WireClient: url must start with one of {WIRE_SCHEMES}, "
                             f"got {url!r}")
        opts = parse_url(url)  # type: ignore[no-untyped-call]  # unannotated in redis-py
        self.url = url
        self.timeout_s = float(timeout_s)
        self.spin_ns = int(spin_us * 1000)
        self._address: str | tuple[str, int] = (
            str(opts["path"]) if "path" in opts
            else (str(opts.get("host", "localhost")), int(opts.get("port", 6379))))
        self._hello: list[bytes] = []
        if opts.get("password") is not None:
            user = opts.get("username")
            auth = [user.encode(), opts["password"].encode()] if user else [
                opts["password"].encode()]
            self._hello.append(command(b"AUTH", auth))
        if int(opts.get("db") or 0):
            self._hello.append(command(b"SELECT", [str(int(opts["db"])).encode()]))
        self._sock: socket.socket | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._poll: select.poll | None = None
        self._buf = bytearray()
        #: Connections opened, and reads whose reply came while spinning / after sleeping.
        self.connects = 0
        self.spun = 0
        self.slept = 0

    def __repr__(self) -> str:
        return f"WireClient({self.url!r}, connected={self._sock is not None})"

    def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of ``keys`` (None where absent), in one ``MGET``.

        Raises
        ------
        redis.exceptions.TimeoutError, redis.exceptions.ConnectionError
            Past the budget, or the connection failed (the socket is closed).
        redis.exceptions.ResponseError
            The server answered with an error (e.g. ``MovedError`` from a cluster node).
        """
        if not keys:
            return []
        reply = self.execute(command(b"MGET", keys))
        if not isinstance(reply, list):
            raise ValueError(f"Redis at {self.url}: MGET answered {reply!r}")
        return reply

    def execute(self, raw: bytes) -> Any:
        """Send the RESP-encoded command ``raw`` and return its reply (an error reply is
        raised), within ``timeout_s``. Threads take turns on the connection; the wait for
        it counts against the budget."""
        from redis.exceptions import TimeoutError as RedisTimeoutError

        deadline = time.perf_counter() + self.timeout_s
        if not self._lock.acquire(timeout=self.timeout_s):
            raise RedisTimeoutError(f"Redis at {self.url}: the connection stayed busy with "
                                    "another thread's command past the budget")
        try:
            if self._pid != os.getpid():  # a forked child: its own connection
                self._drop()
            if self._sock is None:
                self._connect(deadline)
            reply = self._call(raw, deadline)
        except BaseException:
            self._drop()
            raise
        finally:
            self._lock.release()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _connect(self, deadline: float) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        left = deadline - time.perf_counter()
        if left <= 0:
            raise RedisTimeoutError(f"Redis at {self.url}: no time left to connect")
        try:
            if isinstance(self._address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(left)
                try:
                    sock.connect(self._address)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._address, timeout=left)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as e:  # the builtin one (socket.timeout)
            raise RedisTimeoutError(f"Redis at {self.url}: connecting: timed out") from e
        except OSError as e:
            raise RedisConnectionError(f"Redis at {self.url}: connecting: {e}") from e
        sock.setblocking(False)
        self._sock = sock
        self._pid = os.getpid()
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._buf.clear()
        self.connects += 1
        for hello in self._hello:
            reply = self._call(hello, deadline)
            if isinstance(reply, Exception):
                raise reply

    def _call(self, raw: bytes, deadline: float) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        sock, poller = self._sock, self._poll
        assert sock is not None and poller is not None
        try:
            sent = sock.send(raw)
            while sent < len(raw):  # only a large command fills the socket buffer
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise RedisTimeoutError(f"Redis at {self.url}: sending: timed out")
                select.select([], [sock], [], left)
                sent += sock.send(raw[sent:])
            buf = self._buf
            spin_until = time.perf_counter_ns() + self.spin_ns
            spinning = True
            while True:
                try:
                    chunk = sock.recv(_CHUNK)
                except BlockingIOError:
                    chunk = None
                if chunk is None:  # nothing yet: spin on, then sleep in poll
                    if time.perf_counter_ns() < spin_until:
                        os.sched_yield()  # a redis-server waiting for this CPU runs now
                        continue
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        raise RedisTimeoutError(f"Redis at {self.url}: reading: timed out")
                    spinning = False
                    poller.poll(math.ceil(left * 1000.0))
                    continue
                if not chunk:
                    raise RedisConnectionError(f"Redis at {self.url}: closed the connection")
                buf += chunk
                got = parse_reply(buf)
                if got is not None:
                    del buf[: got[1]]
                    if spinning:
                        self.spun += 1
                    else:
                        self.slept += 1
                    return got[0]
        except (RedisTimeoutError, RedisConnectionError):
            raise
        except OSError as e:
            raise RedisConnectionError(f"Redis at {self.url}: {e}") from e

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is not None:
            self._drop()

    def close(self) -> None:
        """Close the socket (the next call connects again)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._poll = None
            self._buf.clear()
