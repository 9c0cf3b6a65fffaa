"""Instructions per joined event (valgrind's cachegrind): today's joiner against a commit.

``python benchmarks/stream/exp_join_instructions.py [--base COMMIT] [--events N]
[--candidates C]``

On this shared VM the CPU time per event of one and the same joiner moves by up to 1.6x from
minute to minute (docs/stream.md), more than most changes to the per-event path do; the
number of instructions it executes does not. Each version -- ``--base``'s ``src/``
(extracted with ``git archive``) and today's -- runs under ``valgrind --tool=cachegrind
--cache-sim=no`` twice, each a fresh process with ``PYTHONHASHSEED=0``: once joining the
first ``N`` events of a simulated stream (``bench join``'s: 5,000 requests per second of
event time, window 10 s; a checkpoint every 6,000 events, about 0.2 s of a joiner, since
under valgrind the 0.2 s of ``bench join`` hold far fewer events) after a warm-up join of
3,000, once writing those events to the input log without joining them. The difference
over ``N`` is the instructions per event: imports, numba's cached kernels, the warm-up and
writing the input are in both runs and cancel. A first valgrind run of each
version (not counted) compiles its kernels into its numba cache for the CPU that valgrind
presents, which is not the host's: else a measured run may compile them (~10^10
instructions) and the other load them.

Instructions are not time: memory stalls (a pending impression is read again ~10 s of event
time after it was made) and system calls' kernel side do not count. So this shows the work a
change removed; ``bench join`` shows what that is worth in events per second. Needs
valgrind (Debian ``valgrind``); each run takes 1-3 minutes, two run at a time. One JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve()
WARMUP = 3_000
CHECKPOINT_EVERY = 6_000  # events; ~0.2 s of a joiner at 30,000 events/s


def _join(records: list[bytes], join: bool) -> None:
    """Write ``records`` to a file log and (``join``) join them as ``bench join`` does, with
    a checkpoint every :data:`CHECKPOINT_EVERY` events instead of every 0.2 s (under
    valgrind a second of wall time holds ~50x fewer events: checkpoints by time would be
    ~50x as many per event)."""
    from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig
    from freshrec.stream.job import tune_memory

    cfg = JoinerConfig(window_s=10, allowed_lateness_s=2, checkpoint_every_s=1e9,
                       max_pending_in_memory=200_000)
    with tempfile.TemporaryDirectory() as d:
        src = FileLog(f"{d}/in", FileLogConfig(fsync="never"))
        for i in range(0, len(records), 1000):
            src.append(records[i:i + 1000])
        if not join:
            src.close()
            return
        out = FileLog(f"{d}/out", FileLogConfig(fsync="never"))
        j = Joiner(src, out, f"{d}/state", cfg)
        tune_memory()
        done = 0
        while j.counters.get("events_in", 0) < len(records):
            j.step(max_records=2000)
            if j.counters["events_in"] - done >= CHECKPOINT_EVERY:
                j.checkpoint()
                done = j.counters["events_in"]
        j.flush()
        j.close()
        src.close()
        out.close()


def _child(records_file: str, events: int, join: bool) -> None:
    """Join the warm-up, then write the first ``events`` records to a log and (``join``)
    join them."""
    with open(records_file, "rb") as f:
        records = pickle.load(f)
    _join(records[:WARMUP], True)
    _join(records[:events], join)


def _instructions(path: str, records_file: str, events: int, join: bool) -> int:
    """Instructions (cachegrind's ``I refs``) of a child process running ``path``'s package."""
    env = dict(os.environ, PYTHONPATH=path, PYTHONHASHSEED="0")
    with tempfile.NamedTemporaryFile(suffix=".cg") as out:
        got = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={out.name}", sys.executable, str(_HERE), "--child",
             records_file, "--events", str(events), *([] if join else ["--no-join"])],
            env=env, capture_output=True, text=True, timeout=3600)
    m = re.search(r"I\s+refs:\s+([\d,]+)", got.stderr)
    if got.returncode != 0 or m is None:
        raise RuntimeError(f"valgrind run of {path} failed: {got.stderr[-1500:]}")
    return int(m.group(1).replace(",", ""))


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="exp_join_instructions")
    ap.add_argument("--base", default="4c23e9c", help="commit whose joiner is the baseline")
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--candidates", type=int, default=1)
    ap.add_argument("--child", metavar="RECORDS", help=argparse.SUPPRESS)
    ap.add_argument("--no-join", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        _child(opts.child, opts.events, not opts.no_join)
        return {}
    from freshrec.benchinfo import extract_src, machine_info
    from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig

    if subprocess.run(["which", "valgrind"], capture_output=True).returncode != 0:
        raise SystemExit("exp_join_instructions: needs valgrind (apt-get install valgrind)")
    sim = ClickStreamSimulator(SimulatorConfig(seed=2, requests_per_s=5000.0,
                                               candidates=opts.candidates))
    records: list[bytes] = []
    for _, rec in sim.records(n_requests=opts.events):  # >= 1 event per request
        records.append(rec)
        if len(records) == max(opts.events, WARMUP):
            break
    with tempfile.TemporaryDirectory() as d:
        records_file = os.path.join(d, "records")
        with open(records_file, "wb") as f:
            pickle.dump(records, f)
        paths = {"current": str(_HERE.parents[2] / "src"), "base": extract_src(opts.base, d)}
        with ThreadPoolExecutor(2) as pool:
            # a first run of each version compiles its kernels into its numba cache for the
            # CPU valgrind presents (not the host's), so that neither measured run does
            list(pool.map(lambda path: _instructions(path, records_file, WARMUP, False),
                          paths.values()))
            runs = [(name, join) for name in paths for join in (True, False)]
            counts = dict(zip(runs, pool.map(
                lambda run: _instructions(paths[run[0]], records_file, opts.events, run[1]),
                runs), strict=True))
    res: dict[str, Any] = {"experiment": "join_instructions", "base": opts.base,
                           "events": opts.events, "candidates": opts.candidates}
    for name in paths:
        res[f"{name}_instructions_per_event"] = (
            (counts[(name, True)] - counts[(name, False)]) / opts.events)
    res["instructions_ratio_base_over_current"] = (res["base_instructions_per_event"]
                                                   / res["current_instructions_per_event"])
    res.update(machine_info())
    return res


if __name__ == "__main__":
    out = main(sys.argv[1:])
    if out:
        print(json.dumps(out, indent=2))
