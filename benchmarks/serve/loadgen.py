"""Open-loop HTTP load generator (a separate process): ``python loadgen.py URL BODIES QPS SECONDS OUT``.

Sends the pre-encoded JSON bodies of file ``BODIES`` (one per line) round-robin to
``URL/score`` at a fixed rate, and writes to ``OUT`` a JSON object with each request's
latency measured from its *scheduled* send time (no coordinated omission), the latencies of
the 200s alone (also from their actual send time, which leaves out the generator's own
lateness when it cannot keep the rate), the status codes, and the generator's own CPU time
(``cpu_s``: what it took from the cores it shares with the server).

It is one thread over non-blocking sockets and one ``epoll`` (no asyncio tasks or streams;
its CPU per request beside the asyncio one's is in docs/serving.md), woken at each send
time by a ``timerfd`` (microsecond timers; ``epoll``'s own timeout has millisecond steps,
which would make sends up to 1 ms late). One request at a time per keep-alive connection
(no pipelining, so a slow response never delays another request); a request goes on the
connection idle the longest (round-robin over the idle ones, as a load balancer spreads
requests over its upstream connections, so that every worker process holding a connection
gets its share); a new connection is opened only when every one is busy; a connection idle
over 4 s is dropped before the server's keep-alive timeout closes it; a request unanswered
in 30 s counts as an error (status 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import socket
import struct
import sys
import time
from collections import deque
from urllib.parse import urlsplit

IDLE_S = 4.0  # a pooled connection idle longer is dropped (uvicorn closes them after 5 s)
TIMEOUT_S = 30.0  # a request unanswered this long counts as an error (status 0)

_CLOCK_MONOTONIC, _TFD_NONBLOCK, _TFD_TIMER_ABSTIME = 1, os.O_NONBLOCK, 1


class _Timer:
    """A ``timerfd`` on CLOCK_MONOTONIC (``time.monotonic``'s clock) through libc."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")

    def at(self, when: float) -> None:
        """Fire once at monotonic time ``when`` (seconds)."""
        sec = int(when)
        nsec = max(1, int((when - sec) * 1e9))  # (0, 0) would disarm it
        spec = struct.pack("llll", 0, 0, sec, nsec)
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, spec, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)


class _Conn:
    __slots__ = ("sock", "fd", "buf", "due", "sent", "idle_since", "pending", "connected",
                 "out")

    def __init__(self, addr: tuple[str, int], ep: select.epoll) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.buf = bytearray()
        self.due = self.sent = self.idle_since = 0.0
        self.pending = b""  # bytes still to send
        self.connected = False
        self.out = True  # registered for EPOLLOUT (until connected and the request is sent)
        err = self.sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        ep.register(self.fd, select.EPOLLIN | select.EPOLLOUT)


def _response(buf: bytearray) -> tuple[int, int, bool] | None:
    """``(status, total length, connection close)`` of a complete response at the start of
    ``buf``, or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    length = 0
    k = head.find(b"\r\ncontent-length:")
    if k >= 0:
        e = head.find(b"\r\n", k + 2)
        length = int(head[k + 17:e if e >= 0 else len(head)])
    total = end + 4 + length
    if len(buf) < total:
        return None
    return int(buf[9:12]), total, b"\r\nconnection: close" in head


def run(url: str, bodies: list[bytes], qps: float, seconds: float) -> dict:
    u = urlsplit(url)
    addr = (u.hostname or "127.0.0.1", u.port or 80)
    reqs = [b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
    n = int(qps * seconds)
    lat: list[float] = []
    ok: list[float] = []
    ok_sent: list[float] = []
    codes: dict[str, int] = {}
    ep = select.epoll()
    timer = _Timer()
    ep.register(timer.fd, select.EPOLLIN)
    idle: deque[_Conn] = deque()
    busy: dict[int, _Conn] = {}
    cpu0 = time.process_time()
    t0 = time.monotonic() + 0.05
    i = 0

    def finish(c: _Conn, status: int) -> None:
        now = time.monotonic()
        lat.append(now - c.due)
        if status == 200:
            ok.append(now - c.due)
            ok_sent.append(now - c.sent)
        codes[str(status)] = codes.get(str(status), 0) + 1

    def drop(c: _Conn) -> None:
        busy.pop(c.fd, None)
        with contextlib.suppress(OSError, ValueError):
            ep.unregister(c.fd)
        c.sock.close()

    def write(c: _Conn) -> None:  # (epoll is modified only when the wanted events change)
        try:
            sent = c.sock.send(c.pending)
        except BlockingIOError:
            sent = 0
        c.pending = c.pending[sent:]
        if c.pending and not c.out:
            ep.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)
            c.out = True
        elif not c.pending and c.out:
            ep.modify(c.fd, select.EPOLLIN)
            c.out = False

    last_check = time.monotonic()
    armed = -1  # the request the timer is set for
    while i < n or busy:
        now = time.monotonic()
        while i < n and t0 + i / qps <= now:
            due = t0 + i / qps
            c = None
            while idle:
                cand = idle.popleft()  # the connection idle the longest
                if now - cand.idle_since < IDLE_S:
                    c = cand
                    break
                ep.unregister(cand.fd)  # (before the close: a closed socket has no fd)
                cand.sock.close()
            try:
                if c is None:
                    c = _Conn(addr, ep)
                c.due, c.sent, c.pending = due, time.monotonic(), reqs[i % len(reqs)]
                c.buf.clear()
                busy[c.fd] = c
                if c.connected:
                    write(c)
            except OSError:
                if c is not None:
                    drop(c)
                lat.append(time.monotonic() - due)
                codes["0"] = codes.get("0", 0) + 1
            i += 1
        if i < n and armed != i:
            timer.at(t0 + i / qps)
            armed = i
        for fd, ev in ep.poll(1.0 if i < n else 0.1):
            if fd == timer.fd:
                timer.clear()
                continue
            c = busy.get(fd)
            if c is None:  # an idle connection the server closed
                for k, cand in enumerate(idle):
                    if cand.fd == fd:
                        del idle[k]
                        ep.unregister(fd)
                        cand.sock.close()
                        break
                continue
            if ev & select.EPOLLOUT:
                if not c.connected:
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        drop(c)
                        finish(c, 0)
                        continue
                    c.connected = True
                    c.sent = time.monotonic()
                write(c)
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                try:
                    data = c.sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(c)
                    finish(c, 0)
                    continue
                c.buf += data
                r = _response(c.buf)
                if r is None:
                    continue
                status, _, close = r
                finish(c, status)
                del busy[fd]
                if close:
                    ep.unregister(fd)
                    c.sock.close()
                else:
                    c.idle_since = time.monotonic()
                    idle.append(c)
        now = time.monotonic()
        if now - last_check > 0.5:
            last_check = now
            for c in [c for c in busy.values() if now - c.due > TIMEOUT_S]:
                drop(c)
                finish(c, 0)
    end = time.monotonic()
    for c in idle:
        c.sock.close()
    ep.close()
    os.close(timer.fd)
    return {"latencies_s": lat, "ok_latencies_s": ok, "ok_sent_latencies_s": ok_sent,
            "codes": codes, "sent": n, "achieved_qps": n / max(1e-9, end - t0),
            "cpu_s": time.process_time() - cpu0}


def main() -> None:
    url, bodies_path, qps, seconds, out = sys.argv[1:6]
    with open(bodies_path, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    res = run(url, bodies, float(qps), float(seconds))
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
