"""What expiring dedupe keys costs a long-running joiner: today's joiner against a commit.

``python benchmarks/stream/exp_join_expiry.py [--base COMMIT] [--requests N] [--rate R]
[--pairs P]``

A joiner keeps every event id (and every emitted request id) for ``dedupe_horizon_s`` of
event time and then deletes them from LMDB, a minute bucket at a time. Here the horizon is
as short as the joiner allows (``dedupe_horizon_s=0``: label window + lateness + 60 s) and
the 1-candidate stream (``--requests`` requests at ``--rate`` per second of event time) lasts
minutes, so buckets expire during the run, as they do every minute in production once the
first horizon has passed. The same stream is joined by today's joiner (``current``) and by
``--base``'s (``src/`` of that commit, extracted with ``git archive``, first on the path of
its process), in alternating fresh processes (each first in every other pair), ``--pairs``
times. Per setting, the median
over pairs of: CPU microseconds per event, the longest time one ``step()`` spent expiring
keys (wall seconds, the dedupe index's expiry and deletion calls timed: a stall holds back
every example behind it) and the total, the longest step and the 99th percentile step
(these also hold the collector's full passes), and the number of steps.
One JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from freshrec.benchinfo import machine_info

_HERE = Path(__file__).resolve()


def _child(requests: int, rate: float) -> dict[str, float]:
    from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig, write_to_log
    from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig
    from freshrec.stream.dedupe import KeyIndex
    from freshrec.stream.job import tune_memory

    expiring = [0.0]  # seconds spent expiring keys in the current step

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                expiring[0] += time.perf_counter() - t
        return wrapper

    # the expiry work of either version: base deletes in expire(), today's in _purge()
    for name in ("expire", "_purge"):
        if hasattr(KeyIndex, name):
            setattr(KeyIndex, name, timed(getattr(KeyIndex, name)))

    sim = ClickStreamSimulator(SimulatorConfig(seed=5, requests_per_s=rate, candidates=1))
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=2, checkpoint_every_s=0.2,
                       dedupe_horizon_s=0)
    with tempfile.TemporaryDirectory() as d:
        src = FileLog(f"{d}/in", FileLogConfig(fsync="never"))
        n = write_to_log(sim.records(n_requests=requests), src, batch=1000)
        dst = FileLog(f"{d}/out", FileLogConfig(fsync="never"))
        j = Joiner(src, dst, f"{d}/state", cfg)
        tune_memory()
        steps: list[float] = []
        expiry: list[float] = []
        cpu = time.process_time()
        while j.counters.get("events_in", 0) < n:
            t, expiring[0] = time.perf_counter(), 0.0
            j.step(max_records=2000)
            steps.append(time.perf_counter() - t)
            expiry.append(expiring[0])
        j.flush()
        cpu = time.process_time() - cpu
        j.close()
        src.close()
        dst.close()
    steps.sort()
    return {"cpu_us_per_event": cpu / n * 1e6, "max_step_s": steps[-1],
            "max_expiry_in_a_step_s": max(expiry), "expiry_s": sum(expiry),
            "p99_step_s": steps[int(0.99 * (len(steps) - 1))], "steps": float(len(steps)),
            "events": float(n)}


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="exp_join_expiry")
    ap.add_argument("--base", default="80ade67", help="commit whose joiner is the baseline")
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per event-time second")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        return _child(opts.requests, opts.rate)
    # (here, not at the top: a child runs the base commit's package, which may lack it)
    from freshrec.benchinfo import alternating_children, extract_src

    child = [sys.executable, str(_HERE), "--child", "--requests", str(opts.requests),
             "--rate", str(opts.rate)]
    with tempfile.TemporaryDirectory() as d:
        paths = {"current": str(_HERE.parents[2] / "src"), "base": extract_src(opts.base, d)}
        runs = alternating_children(
            {"current": child, "base": child}, opts.pairs,
            envs={name: dict(os.environ, PYTHONPATH=path) for name, path in paths.items()},
            rotate=True, log=lambda line: print(line, file=sys.stderr))
    res: dict[str, Any] = {"experiment": "join_expiry", "base": opts.base,
                           "requests": opts.requests, "rate": opts.rate, "pairs": opts.pairs}
    for name, rs in runs.items():
        for key in rs[0]:
            res[f"{name}_{key}"] = statistics.median(r[key] for r in rs)
    res["max_expiry_ratio_base_over_current"] = (res["base_max_expiry_in_a_step_s"]
                                                 / res["current_max_expiry_in_a_step_s"])
    res["cpu_ratio_base_over_current"] = (res["base_cpu_us_per_event"]
                                          / res["current_cpu_us_per_event"])
    res.update(machine_info())
    return res


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=None if "--child" in sys.argv else 2))
