"""What keeping freed memory in the heap does to a joiner: same joins, two heap settings.

``python benchmarks/stream/exp_join_heap.py [--requests N] [--candidates C] [--joins J]
[--pairs P]``

The ``bench join`` 35-candidate stream (``--requests`` impressions and their actions, every
impression pending until the end-of-stream flush) is joined ``--joins`` times in a row in a
fresh process, as a long-running joiner joins batch after batch, once with glibc's default
allocator settings (``default``) and once after
:func:`freshrec._heap.retain_freed_heap` (``retained``, what ``freshrec join`` applies through
:func:`freshrec.stream.job.tune_memory`). Both processes set the collector as ``freshrec
join`` does (:func:`freshrec.stream.job.tune_gc`). The two alternate ``--pairs`` times, so both
see the same machine. For each setting, per join position (1st, 2nd, ...): the median over
pairs of examples/s, user and system CPU seconds and minor page faults. One JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

from freshrec.benchinfo import alternating_children, machine_info


def _child(setting: str, requests: int, candidates: int, joins: int) -> list[dict[str, float]]:
    """Join the stream ``joins`` times in this process under ``setting``."""
    from freshrec._heap import retain_freed_heap
    from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
    from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig
    from freshrec.stream.job import tune_gc

    sim = ClickStreamSimulator(SimulatorConfig(seed=3, requests_per_s=5000.0,
                                               candidates=candidates))
    records = [r for _, r in sim.records(n_requests=requests)]
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=2, checkpoint_every_s=0.2,
                       max_pending_in_memory=200_000)
    if setting == "retained":
        retain_freed_heap()
    out = []
    for _ in range(joins):
        with tempfile.TemporaryDirectory() as d:
            src = FileLog(f"{d}/in", FileLogConfig(fsync="never"))
            for i in range(0, len(records), 1000):
                src.append(records[i:i + 1000])
            dst = FileLog(f"{d}/out", FileLogConfig(fsync="never"))
            j = Joiner(src, dst, f"{d}/state", cfg)
            tune_gc()
            before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            while j.counters.get("events_in", 0) < len(records):
                j.step(max_records=2000)
            j.flush()
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_SELF)
            out.append({"examples_per_s": j.counters.get("examples_out", 0) / wall,
                        "user_s": after.ru_utime - before.ru_utime,
                        "system_s": after.ru_stime - before.ru_stime,
                        "minor_faults": float(after.ru_minflt - before.ru_minflt)})
            j.close()
            src.close()
            dst.close()
    return out


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="exp_join_heap")
    ap.add_argument("--requests", type=int, default=12_000)
    ap.add_argument("--candidates", type=int, default=35)
    ap.add_argument("--joins", type=int, default=4, help="joins in a row per process")
    ap.add_argument("--pairs", type=int, default=3, help="default/retained processes, alternating")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        return {"joins": _child(opts.child, opts.requests, opts.candidates, opts.joins)}
    runs = alternating_children({setting: [
        sys.executable, __file__, "--child", setting, "--requests", str(opts.requests),
        "--candidates", str(opts.candidates), "--joins", str(opts.joins)]
        for setting in ("default", "retained")}, opts.pairs)
    result: dict[str, Any] = {"requests": opts.requests, "candidates": opts.candidates,
                              "joins": opts.joins, "pairs": opts.pairs}
    for setting, children in runs.items():
        per_run = [child["joins"] for child in children]
        result[setting] = [{key: statistics.median(run[k][key] for run in per_run)
                            for key in per_run[0][k]} for k in range(opts.joins)]
    result.update(machine_info())
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
