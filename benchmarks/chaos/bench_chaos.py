"""Chaos suite: the loop under kill -9, a Redis restart, registry damage and garbage records.

``freshrec bench chaos --json [--quick] [--kills K] [--requests N] [--partitions 1,4]
[--backends file,redis] [--seed S] [--workdir DIR] [--stages join,train,serve]
[--kinds a,b] [--copies C] [--no-registry-faults]``

Runs one scenario per (backend, partitions) -- see ``harness.py`` for what a scenario does
and how each count is defined -- and prints one JSON object: the totals ``chaos_*`` over the
scenarios, the same counts per scenario prefixed with its name (``file_p4_examples_lost``,
``redis_p1_server_unavailable_s``, ...), and the configuration. Full run: file and Redis
logs, 1 and 4 partitions, 20 kills per stage, 6,000 requests with three copies of every
garbage kind; ``--quick``: the same scenarios with 2 kills per stage, 1,000 requests and one
copy of each garbage kind (about 4 minutes on 2 cores). Redis scenarios are skipped (``redis_skipped`` says why) when
``redis-server`` is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from freshrec.benchinfo import load_script, machine_info


def _harness() -> Any:
    return load_script(Path(__file__).with_name("harness.py"), "freshrec_chaos_harness")


#: counts summed over the scenarios into ``chaos_<name>``
TOTALS = ("examples_lost", "examples_duplicated", "wrong_labels", "missed_clicks",
          "permanent_crashes", "server_unavailable_s", "examples_spurious", "server_down_s")


def main(argv: list[str] | None = None, verbose: bool = True) -> dict[str, Any]:
    h = _harness()
    p = argparse.ArgumentParser(prog="freshrec bench chaos")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--kills", type=int, default=None, help="SIGKILLs per stage (20; quick 2)")
    p.add_argument("--requests", type=int, default=None,
                   help="simulated requests per scenario (6000; quick 1000)")
    p.add_argument("--partitions", default="1,4")
    p.add_argument("--backends", default="file,redis")
    p.add_argument("--stages", default="join,train,serve")
    p.add_argument("--kinds", default=",".join(h.garbage.KINDS))
    p.add_argument("--copies", type=int, default=None, help="copies of each garbage kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="keep everything under this directory")
    p.add_argument("--no-registry-faults", action="store_true")
    a = p.parse_args(argv)
    kills = a.kills if a.kills is not None else (2 if a.quick else 20)
    requests = a.requests if a.requests is not None else (1000 if a.quick else 6000)
    copies = a.copies if a.copies is not None else (1 if a.quick else 3)
    parts = [int(x) for x in a.partitions.split(",") if x]
    backends = [x for x in a.backends.split(",") if x]
    stages = tuple(x for x in a.stages.split(",") if x)
    kinds = tuple(x for x in a.kinds.split(",") if x)
    out: dict[str, Any] = {}
    if "redis" in backends and shutil.which("redis-server") is None:
        backends.remove("redis")
        out["redis_skipped"] = "redis-server is not installed (scripts/ensure-redis)"

    def say(msg: str) -> None:
        if verbose:
            print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C: the scenario stops its children, Redis and the tmpfs
        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _term)
    names = []
    for backend in backends:
        for n in parts:
            cfg = h.ChaosConfig(
                backend=backend, partitions=n, kills=kills, stages=stages, requests=requests,
                copies=copies, kinds=kinds, seed=a.seed,
                registry_faults=not a.no_registry_faults,
                workdir=str(Path(a.workdir) / f"{backend}_p{n}") if a.workdir else None)
            res = h.run_scenario(cfg, log=say)
            say(f"[{cfg.name}] " + " ".join(f"{k}={v}" for k, v in res.items()
                                            if k in TOTALS or k == "error"))
            names.append(cfg.name)
            out.update({f"{cfg.name}_{k}": v for k, v in res.items()})
    for k in TOTALS:
        vals = [out.get(f"{n}_{k}") for n in names]
        known = [v for v in vals if v is not None]
        out[f"chaos_{k}"] = round(sum(known), 3) if known else None
    # a scenario that could not count (it failed before reading the output) counts as crashed
    out["chaos_scenarios_failed"] = sum(1 for n in names if f"{n}_error" in out)
    out.update({"scenarios": ",".join(names), "partitions": a.partitions,
                "backends": ",".join(backends), "kills_per_stage": kills,
                "stages": ",".join(stages), "requests": requests, "garbage_kinds": len(kinds),
                "garbage_copies": copies, "seed": a.seed, "quick": a.quick,
                "window_s": h.ChaosConfig().window_s,
                "lateness_s": h.ChaosConfig().lateness_s})
    out.update(machine_info())
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:])))
