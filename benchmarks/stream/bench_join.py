"""Joiner benchmark: events/s per core (file log, Redis) and event -> example latency.

``freshrec bench join --json [--requests N] [--rate R] [--seconds S] [--redis URL]``

1. Throughput: N simulated requests (100 candidates each, about 1.7 events per request) are
   written to a fresh file log and to Redis Streams; the joiner (window 10 s, lateness 2 s)
   reads them all and emits every example (flush at the end, checkpoints every 0.2 s). One
   process, so events/s is per core.
2. Latency: a producer process appends the same records to a file log at R events/s
   (default 300: what one core sustains with 100 candidates; see docs/stream.md) for S
   seconds while the joiner tails it. For each example the clock starts when the
   producer appended the first event whose time moved the watermark past the impression's
   deadline (timestamp + window), i.e. when the example became due, and stops when the
   checkpoint that appended it to the output log returned. Reported: p50/p99 in seconds, and
   the rate actually achieved.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

from freshrec.benchinfo import machine_info
from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig, RedisLog, RedisLogConfig

WINDOW_S, LATENESS_S = 10, 2
LAT_WINDOW_S = 1  # label window of the latency run (its stream lasts a few seconds)


def _bench_log_module():
    p = Path(__file__).with_name("bench_log.py")
    spec = importlib.util.spec_from_file_location("bench_log_helpers", p)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cfg() -> JoinerConfig:
    return JoinerConfig(window_s=WINDOW_S, allowed_lateness_s=LATENESS_S,
                        checkpoint_every_s=0.2, max_pending_in_memory=200_000)


def _throughput(src, out, state: str, n: int) -> float:
    j = Joiner(src, out, state, _cfg())
    t = time.perf_counter()
    while j.counters.get("events_in", 0) < n:
        j.step(max_records=2000)
    j.flush()
    dt = time.perf_counter() - t
    examples = j.counters.get("examples_out", 0)
    j.close()
    return n / dt, examples / dt


def _produce(path: str, records: list[bytes], ts: list[float], rate: float, q) -> None:
    log = FileLog(path, FileLogConfig(fsync="never"))
    batch = max(1, int(rate / 200))  # 5 ms batches
    marks = []
    t0 = time.monotonic()
    max_ts = -1e18
    for i in range(0, len(records), batch):
        log.append(records[i:i + batch])
        max_ts = max(max_ts, max(ts[i:i + batch]))
        marks.append((time.monotonic(), max_ts))
        ahead = (i + batch) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    log.close()
    q.put((marks, len(records) / (time.monotonic() - t0)))


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench join")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--redis", default=None)
    ap.add_argument("--quick", action="store_true", help="500 requests, 2 s of latency run")
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args(argv)
    n_req = 500 if opts.quick else opts.requests
    seconds = 2.0 if opts.quick else opts.seconds
    say = print if verbose else (lambda *a, **k: None)
    sim = ClickStreamSimulator(SimulatorConfig(seed=opts.seed, requests_per_s=5000.0,
                                               candidates=opts.candidates))
    need = max(n_req, int(opts.rate * seconds) + 1)
    records = [r for _, r in sim.records(n_requests=need)]
    say(f"generated {len(records):,} events")
    n_thr = sum(1 for _ in records[: int(len(records) * n_req / need)])
    thr = records[:n_thr]
    res: dict[str, object] = {"requests": n_req, "events": n_thr, "candidates": opts.candidates,
                              "window_s": WINDOW_S, "allowed_lateness_s": LATENESS_S,
                              "threads": 1, "target_rate_events_per_s": opts.rate}
    with tempfile.TemporaryDirectory() as d:
        src = FileLog(f"{d}/in", FileLogConfig(fsync="never"))
        for i in range(0, len(thr), 1000):
            src.append(thr[i:i + 1000])
        out = FileLog(f"{d}/out", FileLogConfig(fsync="never"))
        (res["file_join_events_per_s"],
         res["file_join_examples_per_s"]) = _throughput(src, out, f"{d}/state", len(thr))
        src.close()
        out.close()
    say(f"file join: {res['file_join_events_per_s']:,.0f} events/s")
    with _bench_log_module().redis_server(opts.redis) as url:
        if url is None:
            res["redis_skipped"] = "redis-server not found"
        else:
            name = f"bj-{uuid.uuid4().hex[:8]}"
            src = RedisLog(RedisLogConfig(url=url, name=name + "-in"))
            out = RedisLog(RedisLogConfig(url=url, name=name + "-out"))
            for i in range(0, len(thr), 1000):
                src.append(thr[i:i + 1000])
            with tempfile.TemporaryDirectory() as d:
                (res["redis_join_events_per_s"],
                 res["redis_join_examples_per_s"]) = _throughput(src, out, f"{d}/state",
                                                                 len(thr))
            src.delete()
            out.delete()
            src.close()
            out.close()
            say(f"redis join: {res['redis_join_events_per_s']:,.0f} events/s")
    # latency at the target rate: a stream whose event time advances like wall time
    per_req = len(records) / need
    lat_sim = ClickStreamSimulator(SimulatorConfig(
        seed=opts.seed + 1, requests_per_s=opts.rate / per_req, candidates=opts.candidates))
    lat_recs = [r for _, r in lat_sim.records(n_requests=int(opts.rate * seconds / per_req))]
    ts = [float(orjson.loads(r).get("timestamp", 0) or 0) if b'"timestamp"' in r else 0.0
          for r in lat_recs]
    deadline_of = {}
    for r in lat_recs:
        if b'"impression"' in r:
            e = orjson.loads(r)
            deadline_of[e["request_id"]] = float(e["timestamp"]) + LAT_WINDOW_S
    with tempfile.TemporaryDirectory() as d:
        FileLog(f"{d}/in").close()
        out = FileLog(f"{d}/out", FileLogConfig(fsync="never"))
        src = FileLog(f"{d}/in")
        j = Joiner(src, out, f"{d}/state", JoinerConfig(
            window_s=LAT_WINDOW_S, allowed_lateness_s=LATENESS_S, checkpoint_every_s=0.1,
            max_pending_in_memory=200_000))
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        proc = ctx.Process(target=_produce, args=(f"{d}/in", lat_recs, ts, opts.rate, q))
        proc.start()
        stamped: list[tuple[float, float]] = []  # (deadline event time, wall time out)
        waiting: list[float] = []
        last_ckpt = j._last_ckpt
        got = None
        while True:
            for ex in j.step(max_records=2000):
                waiting.append(deadline_of.get(ex["request_id"], 0.0))
            if j._last_ckpt != last_ckpt:
                last_ckpt = j._last_ckpt
                now = time.monotonic()
                stamped += [(dl, now) for dl in waiting]
                waiting = []
            if got is None and not q.empty():
                got = q.get()
            if got is not None and j.counters.get("events_in", 0) >= len(lat_recs):
                break
        proc.join()
        j.close()
        src.close()
        out.close()
    marks, achieved = got
    mark_t = np.array([m[0] for m in marks])
    mark_wm = np.array([m[1] for m in marks]) - LATENESS_S
    lats = []
    for dl, t_out in stamped:
        k = int(np.searchsorted(mark_wm, dl, side="left"))
        if k < len(mark_t):
            lats.append(t_out - mark_t[k])
    lat = np.array(lats) if lats else np.array([-1.0])
    res.update(event_to_example_p50_s=float(np.percentile(lat, 50)),
               event_to_example_p99_s=float(np.percentile(lat, 99)),
               event_to_example_max_s=float(np.max(lat)),
               latency_examples=len(lats), achieved_rate_events_per_s=achieved,
               latency_seconds=seconds, latency_window_s=LAT_WINDOW_S)
    say(f"latency p50 {res['event_to_example_p50_s']:.3f}s p99 "
        f"{res['event_to_example_p99_s']:.3f}s at {achieved:,.0f} events/s")
    res.update(machine_info())
    return res
