"""Where a Redis-served lookup's tail latency comes from: a per-request breakdown.

``python benchmarks/store/exp_store_tail.py REQUESTS TIMEOUT_MS ROUNDS`` (the figures in
docs/store.md: ``10000 5 1``, run under the bench lock, some with ``nice -n -10`` or
``taskset -c 0`` in front).

Per round, 10,000 users written by a trainer to a private redis-server; per request,
interleaved: the in-process table's ``find`` + ``pool``, the
:class:`~freshrec.store.served.ServedRedisTable`'s (``serve_cache_ms: 0``: one ``MGET`` per
request) with the wall time of its Redis read, the thread CPU time of the request and the
time the garbage collector ran inside it (``gc.callbacks``), then a bare redis-py ``GET``
and a bare :class:`~freshrec.store.wire.WireClient` ``MGET`` (what the served table reads
through) on connections of their own. Prints one JSON line per round: p50/p90/p99/p99.9 (ms) of each,
how many requests took over 1 ms and their median CPU time, and how many of them overlapped
a collection.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.benchinfo import load_script
from freshrec.store import RedisTable
from freshrec.store.client import open_client
from freshrec.store.served import ServedRedisTable
from freshrec.store.wire import WireClient
from freshrec.table import EmbeddingTable, TableConfig


def _load(rel: str, name: str) -> Any:
    return load_script(Path(__file__).resolve().parents[1] / rel, name)


def _q(x: Any) -> list[float]:
    return [round(float(np.quantile(x, p)) * 1000, 3) for p in (0.5, 0.9, 0.99, 0.999)]


def main(argv: list[str]) -> None:
    n, timeout, rounds = int(argv[0]), float(argv[1]), int(argv[2])
    bench = _load("store/bench_store.py", "bench_store")
    gc_spent, gc_start = [0.0], [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_spent[0] += time.perf_counter() - gc_start[0]

    gc.callbacks.append(on_gc)
    one_bag, one = np.array([0, 1]), np.ones(1, np.float32)
    with bench._load("stream/bench_log.py", "bench_log").redis_server(None) as url:
        users = np.arange(1, 10_001, dtype=np.uint64)
        bare = open_client(url, "bare")
        bare.set(b"x", b"y" * 68)
        wire = WireClient(url, timeout_s=5.0)
        for r in range(rounds):
            prefix = f"tail-{uuid.uuid4().hex[:6]}"
            writer = RedisTable(bench.user_config(url, prefix))
            writer.lookup(users, now=0, train=True)
            writer.flush()
            mem = EmbeddingTable(TableConfig(name="user", dim=16))
            mem.lookup(users, now=0, train=True)
            served = ServedRedisTable(bench.user_config(url, prefix, serve_cache_ms=0.0,
                                                        serve_timeout_ms=timeout))
            get, get_wall = served.rows_store.get, list[float]()

            def timed_get(f: Any, _get: Any = get, _w: list[float] = get_wall) -> Any:
                t0 = time.perf_counter()
                out = _get(f)
                _w.append(time.perf_counter() - t0)
                return out

            served.rows_store.get = timed_get  # type: ignore[method-assign,assignment]
            tot, cpu, gcs, bw, ww, memt = [], [], [], [], [], []
            load = os.getloadavg()[0]
            for fid in np.random.default_rng(r).choice(users, size=n):
                f = np.array([fid], np.uint64)
                t0 = time.perf_counter()
                mem.pool(mem.find(f), one_bag, one)
                memt.append(time.perf_counter() - t0)
                g0, c0, t0 = gc_spent[0], time.thread_time(), time.perf_counter()
                served.pool(served.find(f), one_bag, one)
                tot.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
                gcs.append(gc_spent[0] - g0)
                t0 = time.perf_counter()
                bare.get(b"x")
                bw.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                wire.mget([b"x"])
                ww.append(time.perf_counter() - t0)
            a_tot, a_cpu, a_gc, a_bw = map(np.array, (tot, cpu, gcs, bw))
            slow = a_tot > 0.001
            print(json.dumps({
                "round": r, "timeout_ms": timeout, "load": [load, os.getloadavg()[0]],
                "total": _q(a_tot), "memory": _q(memt), "get_wall": _q(get_wall),
                "bare_get": _q(a_bw), "bare_wire_mget": _q(ww), "cpu": _q(a_cpu), "n_slow>1ms": int(slow.sum()),
                "slow_cpu_med_ms": round(float(np.median(a_cpu[slow])) * 1000, 3)
                if slow.any() else None,
                "slow_with_gc": int((a_gc[slow] > 0).sum()),
                "gc_total_ms": round(float(a_gc.sum()) * 1000, 1),
                "bare_slow>1ms": int((a_bw > 0.001).sum()),
                "errors": served.counters["redis_errors"],
                "fallback": served.counters["fallback_rows"]}), flush=True)
            served.close()
            writer.close()
        bare.close()
        wire.close()


if __name__ == "__main__":
    main(sys.argv[1:])
