"""Where a joiner spends its time per 1-candidate event: the per-event cost split.

``python benchmarks/stream/exp_join_costs.py [--requests N] [--repeats R] [--candidates C]``

The same simulated stream (the freshness benchmark's shape: 1 candidate per impression) is
put through the stages of the joiner one at a time, each timed alone in CPU seconds of this
process (best of ``--repeats``) with Python's cyclic garbage collector off, and then through
the whole joiner, with the collector off and on:

- ``read``: :meth:`FileLog.read` of every record (5,000 per call, as ``Joiner.step``);
- ``decode``: :func:`~freshrec.stream.events.decode_events` in chunks of 64 (JSON, the
  candidate kernel, schema checks, the column-wise impression);
- ``encode``: the emitted impressions to Arrow example records
  (:func:`~freshrec.stream.events.emitted_to_record_batch` + ``encode_examples``) and their
  append to a file log;
- ``join_no_gc``: the whole :class:`~freshrec.stream.Joiner` run (checkpoints every 0.2 s);
- ``join``: the same with the collector on, set as ``freshrec join`` sets it
  (:func:`freshrec.stream.job.tune_gc`; ``gc`` = join - join_no_gc: the pending impressions
  are long-lived objects the collector keeps traversing);
- ``join_default_gc``: the same with Python's default collector thresholds.

``state_and_logic`` = join_no_gc - read - decode - encode: dedupe keys, pending
impressions, watermarks, emission order, LMDB writes and commits. One JSON object,
microseconds per event.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable

import orjson

from freshrec.benchinfo import machine_info
from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
from freshrec.errors import InputError
from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig
from freshrec.stream import events as ev
from freshrec.stream.job import tune_gc


def _cpu(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        c = time.process_time()
        fn()
        best = min(best, time.process_time() - c)
    return best


def main(argv: list[str]) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="exp_join_costs")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--candidates", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    opts = ap.parse_args(argv)
    defaults = gc.get_threshold()
    sim = ClickStreamSimulator(SimulatorConfig(seed=2, requests_per_s=5000.0,
                                               candidates=opts.candidates))
    recs = [r for _, r in sim.records(n_requests=opts.requests)]
    n = len(recs)
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=2, checkpoint_every_s=0.2,
                       max_pending_in_memory=200_000)
    with tempfile.TemporaryDirectory() as d:
        src = FileLog(f"{d}/in", FileLogConfig(fsync="never"))
        for i in range(0, n, 1000):
            src.append(recs[i:i + 1000])

        def read() -> None:
            off = 0
            while got := src.read(0, off, 5000):
                off = got[-1].offset + 1

        decoded: list[object] = []

        def decode() -> None:
            decoded.clear()
            for i in range(0, n, 64):
                decoded.extend(ev.decode_events(recs[i:i + 64]))

        gc.disable()
        try:
            times = {"read": _cpu(read, opts.repeats), "decode": _cpu(decode, opts.repeats)}
        finally:
            gc.enable()
        imps = [got[2] for got in decoded
                if not isinstance(got, InputError) and got[2] is not None]  # type: ignore[index]
        emitted = [ev.EmittedImpression(imp, {}, None, 1.0) for imp in imps]
        k = [0]

        def encode() -> None:
            k[0] += 1
            out = FileLog(f"{d}/enc{k[0]}", FileLogConfig(fsync="never"))
            for i in range(0, len(emitted), 1000):  # ~ what one 0.2 s checkpoint holds
                rb = ev.emitted_to_record_batch(emitted[i:i + 1000], ("click",))
                out.append([ev.encode_examples(rb)])
            out.close()

        gc.disable()
        try:
            times["encode"] = _cpu(encode, opts.repeats)
        finally:
            gc.enable()

        def join() -> None:
            k[0] += 1
            out = FileLog(f"{d}/out{k[0]}", FileLogConfig(fsync="never"))
            j = Joiner(src, out, f"{d}/state{k[0]}", cfg)
            while j.counters.get("events_in", 0) < n:
                j.step(max_records=5000)
            j.flush()
            j.close()
            out.close()

        times["join_default_gc"] = _cpu(join, opts.repeats)
        tune_gc()
        times["join"] = _cpu(join, opts.repeats)
        gc.set_threshold(*defaults)
        gc.disable()
        try:
            times["join_no_gc"] = _cpu(join, opts.repeats)
        finally:
            gc.enable()
        src.close()
    us = {f"{k}_us_per_event": v / n * 1e6 for k, v in times.items()}
    us["state_and_logic_us_per_event"] = (us["join_no_gc_us_per_event"]
                                          - us["read_us_per_event"]
                                          - us["decode_us_per_event"]
                                          - us["encode_us_per_event"])
    us["gc_us_per_event"] = us["join_us_per_event"] - us["join_no_gc_us_per_event"]
    res: dict[str, object] = {"experiment": "join_costs", "events": n,
                              "candidates": opts.candidates, "repeats": opts.repeats, **us,
                              "events_per_cpu_s": n / times["join"], **machine_info()}
    return res


if __name__ == "__main__":
    print(orjson.dumps(main(sys.argv[1:]), option=orjson.OPT_INDENT_2).decode())
