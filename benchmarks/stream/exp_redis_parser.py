"""The joiner's CPU per event on Redis Streams with redis-py's Python reply parser vs hiredis.

``python benchmarks/stream/exp_redis_parser.py [--requests N] [--pairs P] [--redis URL]``

``--requests`` simulated requests of 1 candidate (the freshness benchmark's shape) are
appended to a Redis stream log; a fresh process joins them (after one untimed warm-up join)
with hiredis hidden from redis-py (``python``: replies parsed by redis-py's own RESP parser)
or available (``hiredis``: parsed in C; installed with the ``redis`` extra), then joins the
same records from a file log. The two settings alternate ``--pairs`` times. Reported per
setting: medians over the pairs of the joiner's CPU µs per event on Redis and on the file
log, and of their ratio (``redis_over_file_cost_ratio`` of ``bench join``). Without
``--redis`` a redis-server is started on a free loopback port. One JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from freshrec.benchinfo import alternating_children, load_script, machine_info


def _child(setting: str, url: str, requests: int) -> dict[str, float]:
    if setting == "python":
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # redis-py falls back
    from redis.utils import HIREDIS_AVAILABLE

    from freshrec.stream import FileLog, FileLogConfig, RedisLog, RedisLogConfig

    bj = load_script(Path(__file__).with_name("bench_join.py"), "bench_bench_join")
    assert (setting == "hiredis") == HIREDIS_AVAILABLE, "hiredis is not installed"
    records = bj._values(bj._records(1, requests, 6))
    name = f"parser-{uuid.uuid4().hex[:8]}"
    src = RedisLog(RedisLogConfig(url=url, name=f"{name}-in"))
    src.append(records)
    outs = []
    try:
        with tempfile.TemporaryDirectory() as d:
            for k in range(2):  # warm-up, then the timed join
                outs.append(RedisLog(RedisLogConfig(url=url, name=f"{name}-out{k}")))
                redis_s = bj._cpu_per_event(src, outs[-1], f"{d}/state{k}", len(records))
            fsrc = FileLog(f"{d}/in", FileLogConfig(fsync="never"))
            fsrc.append(records)
            file_s = bj._cpu_per_event(fsrc, FileLog(f"{d}/out", FileLogConfig(fsync="never")),
                                       f"{d}/fstate", len(records))
    finally:
        for log in (src, *outs):
            log.delete()
    return {"redis_cpu_us_per_event": redis_s * 1e6, "file_cpu_us_per_event": file_s * 1e6,
            "redis_over_file_cost_ratio": redis_s / file_s}


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="exp_redis_parser")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--redis", default=None, help="redis:// URL (default: start a server)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        return _child(opts.child, opts.redis, opts.requests)
    bench_log = load_script(Path(__file__).with_name("bench_log.py"), "bench_bench_log")
    with bench_log.redis_server(opts.redis) as url:
        if url is None:
            raise SystemExit("exp_redis_parser: redis-server not found")
        runs = alternating_children({setting: [
            sys.executable, __file__, "--child", setting, "--redis", url, "--requests",
            str(opts.requests)] for setting in ("python", "hiredis")}, opts.pairs)
    result: dict[str, Any] = {"requests": opts.requests, "pairs": opts.pairs}
    for setting, per_pair in runs.items():
        result[setting] = {key: statistics.median(p[key] for p in per_pair)
                           for key in per_pair[0]}
        result[f"{setting}_ratios"] = [p["redis_over_file_cost_ratio"] for p in per_pair]
    result.update(machine_info())
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
