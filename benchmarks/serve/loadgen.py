"""Open-loop HTTP load generator (a separate process): ``python loadgen.py URL BODIES QPS SECONDS OUT``.

Sends the pre-encoded JSON bodies of file ``BODIES`` (one per line) round-robin to
``URL/score`` at a fixed rate on keep-alive connections (a new connection whenever all are
busy, so a slow response never delays the next send; connections idle over 4 s are dropped
before the server's keep-alive timeout closes them; a request unanswered in 30 s counts as
an error), and writes to ``OUT`` a JSON object
with each request's latency measured from its *scheduled* send time (no coordinated
omission), the latencies of the 200s alone (also from their actual send time, which leaves
out the generator's own lateness when it cannot keep the rate), and the status codes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

IDLE_S = 4.0  # a pooled connection idle longer is dropped (uvicorn closes them after 5 s)
TIMEOUT_S = 30.0  # a request unanswered this long counts as an error (status 0)


async def _one(pool: list, host: str, port: int, req: bytes, sent: list) -> int:
    now = time.monotonic()
    conn = None
    while pool:
        reader, writer, idle_since = pool.pop()
        if now - idle_since < IDLE_S:
            conn = reader, writer
            break
        writer.close()
    if conn is None:
        conn = await asyncio.open_connection(host, port)
    reader, writer = conn
    try:
        async with asyncio.timeout(TIMEOUT_S):
            sent.append(time.perf_counter())
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
    except BaseException:
        writer.close()
        raise
    pool.append((reader, writer, time.monotonic()))
    return status


async def run(url: str, bodies: list[bytes], qps: float, seconds: float) -> dict:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    reqs = [b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
    pool: list = []
    lat: list[float] = []
    ok: list[float] = []
    ok_sent: list[float] = []
    codes: dict[str, int] = {}
    n = int(qps * seconds)
    t0 = time.perf_counter() + 0.05
    tasks = []

    async def fire(i: int, due: float) -> None:
        sent: list[float] = []
        try:
            status = await _one(pool, host, port, reqs[i % len(reqs)], sent)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            status = 0
        lat.append(time.perf_counter() - due)
        if status == 200:
            ok.append(lat[-1])
            ok_sent.append(time.perf_counter() - sent[0])
        codes[str(status)] = codes.get(str(status), 0) + 1

    for i in range(n):
        due = t0 + i / qps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i, due)))
    await asyncio.gather(*tasks)
    return {"latencies_s": lat, "ok_latencies_s": ok, "ok_sent_latencies_s": ok_sent,
            "codes": codes, "sent": n,
            "achieved_qps": n / max(1e-9, time.perf_counter() - t0)}


def main() -> None:
    url, bodies_path, qps, seconds, out = sys.argv[1:6]
    with open(bodies_path, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    try:
        import uvloop

        res = uvloop.run(run(url, bodies, float(qps), float(seconds)))
    except ImportError:
        res = asyncio.run(run(url, bodies, float(qps), float(seconds)))
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
