"""Log benchmark: append and consume records/s per backend, 1 KB records, in one run.

``freshrec bench log --json [--records N] [--batch B] [--redis URL]``

Appends N records of 1 KB in batches of B to a fresh file log (fsync policy "interval") and
to Redis Streams, then reads them all back from offset 0 in batches of B. Without
``--redis`` a private ``redis-server`` is started on a free loopback port (no persistence)
and stopped afterwards; Redis is skipped (keys absent, ``redis_skipped`` set) when no
server can be had. Also measures the event encodings considered for records: orjson rows
vs Arrow IPC batches, on simulated impressions (100 candidates each); and the two formats of
joined-example records on the examples of those impressions: one orjson row per example
(the legacy format) vs Arrow record batches built column-wise (format v1, one record per
impression batch), encode = from the joiner's held impressions to record bytes, decode = from
record bytes to one ``pyarrow.RecordBatch`` (what the online trainer needs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import orjson
import pyarrow as pa

from freshrec.benchinfo import machine_info
from freshrec.stream import FileLog, FileLogConfig, Log, RedisLog, RedisLogConfig


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str | None]:
    """Yield ``url``, or a private server's URL, or None when redis-server is missing."""
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tempfile.mkdtemp()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", d],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def _append_consume(log: Log, n: int, batch: int) -> tuple[float, float]:
    rec = (b"x" * 1000 + b"\n")[:1024]
    recs = [rec] * batch
    t = time.perf_counter()
    for _ in range(n // batch):
        log.append(recs)
    t_append = time.perf_counter() - t
    got, off = 0, 0
    t = time.perf_counter()
    while got < (n // batch) * batch:
        rs = log.read(0, off, batch)
        got += len(rs)
        off = rs[-1].offset + 1
    t_read = time.perf_counter() - t
    m = (n // batch) * batch
    return m / t_append, m / t_read


def _encodings(n_events: int) -> dict[str, float]:
    from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig

    sim = ClickStreamSimulator(SimulatorConfig(seed=0, malformed_rate=0.0, duplicate_rate=0.0))
    imps = []
    for _, r in sim.records():
        e = orjson.loads(r)
        if e["type"] == "impression":
            imps.append(e)
            if len(imps) >= n_events:
                break
    out: dict[str, float] = {}
    t = time.perf_counter()
    rows = [orjson.dumps(e) for e in imps]
    out["orjson_encode_events_per_s"] = len(imps) / (time.perf_counter() - t)
    t = time.perf_counter()
    for r in rows:
        orjson.loads(r)
    out["orjson_decode_events_per_s"] = len(imps) / (time.perf_counter() - t)
    out["orjson_bytes_per_event"] = sum(map(len, rows)) / len(rows)
    t = time.perf_counter()
    rb = pa.RecordBatch.from_pylist(imps)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, rb.schema) as w:
        w.write_batch(rb)
    blob = sink.getvalue()
    out["arrow_ipc_encode_events_per_s"] = len(imps) / (time.perf_counter() - t)
    t = time.perf_counter()
    back = pa.ipc.open_stream(blob).read_all().to_pylist()
    out["arrow_ipc_decode_to_rows_events_per_s"] = len(back) / (time.perf_counter() - t)
    out["arrow_ipc_bytes_per_event"] = len(blob) / len(imps)
    out.update(_example_records(imps))
    return out


def _example_records(imps: list[dict]) -> dict[str, float]:
    from freshrec.stream import events as ev

    emitted = [ev.EmittedImpression(ev.compact_impression(e), {}, None, 1.0) for e in imps]
    n = sum(len(e) for e in emitted)
    actions = ["click"]
    out: dict[str, float] = {}
    t = time.perf_counter()
    rows = [orjson.dumps(r) for r in ev.emitted_to_rows(emitted, actions)]
    out["examples_rows_encode_per_s"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    recs = [ev.encode_examples(ev.emitted_to_record_batch(emitted[i:i + 100], actions))
            for i in range(0, len(emitted), 100)]
    out["examples_arrow_encode_per_s"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    ev.decode_examples(rows)
    out["examples_rows_decode_per_s"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    ev.decode_examples(recs)
    out["examples_arrow_decode_per_s"] = n / (time.perf_counter() - t)
    out["examples_rows_bytes_per_example"] = sum(map(len, rows)) / n
    out["examples_arrow_bytes_per_example"] = sum(map(len, recs)) / n
    return out


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench log")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--redis", default=None, help="use this server instead of a private one")
    ap.add_argument("--quick", action="store_true", help="50 k records")
    opts = ap.parse_args(argv)
    n = 50_000 if opts.quick else opts.records
    say = print if verbose else (lambda *a, **k: None)
    result: dict[str, object] = {"records": n, "record_bytes": 1024, "batch": opts.batch,
                                 "threads": 1, "encoding": "orjson rows"}
    with tempfile.TemporaryDirectory() as d:
        log = FileLog(d, FileLogConfig(fsync="interval"))
        a, c = _append_consume(log, n, opts.batch)
        log.close()
    result.update(file_append_per_s=a, file_consume_per_s=c)
    say(f"file: append {a:,.0f}/s consume {c:,.0f}/s")
    with redis_server(opts.redis) as url:
        if url is None:
            result["redis_skipped"] = "redis-server not found"
        else:
            rlog = RedisLog(RedisLogConfig(url=url, name=f"bench-{uuid.uuid4().hex[:8]}"))
            a, c = _append_consume(rlog, n, opts.batch)
            rlog.delete()
            rlog.close()
            result.update(redis_append_per_s=a, redis_consume_per_s=c)
            say(f"redis: append {a:,.0f}/s consume {c:,.0f}/s")
    result.update(_encodings(500 if opts.quick else 2000))
    result.update(machine_info())
    return result
