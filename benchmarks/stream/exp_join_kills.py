"""Issue-10 scenario: a multi-partition log joined twice and once under repeated kill -9,
each counted against the reference join computed from the log itself.

``python benchmarks/stream/exp_join_kills.py [--requests 40000] [--partitions 2] [--kills 15]``

Writes the log with ``freshrec simulate --requests N --candidates 20 --partitions P --seed 11``,
joins it with ``freshrec join`` (window 30 s, lateness 5 s, ``--flush``) twice without
interruption and once killed with SIGKILL at random moments ``--kills`` times (then run to
the end), and prints one JSON object: per run the counts of
:func:`freshrec.stream.truth.compare` (lost, duplicated, wrong labels, missed clicks), and
whether the decoded examples of every output partition are equal, in order, across runs
(record framing follows checkpoint timing; the examples do not).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from freshrec.stream import FileLog
from freshrec.stream.events import decode_examples
from freshrec.stream.truth import TruthConfig, compare, reference_join

WINDOW_S, LATENESS_S = 30, 5


def _values(path: Path) -> list[list[bytes]]:
    log = FileLog(path)
    out = []
    for p in range(log.partitions):
        vals: list[bytes] = []
        off = 0
        while recs := log.read(p, off, 10_000):
            vals += [r.value for r in recs]
            off = recs[-1].offset + 1
        out.append(vals)
    log.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--kills", type=int, default=15)
    ap.add_argument("--seed", type=int, default=11)
    opts = ap.parse_args(argv)
    fr = os.path.join(os.path.dirname(sys.executable), "freshrec")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        subprocess.run([fr, "simulate", "--log", f"file:{d}/ev", "--requests",
                        str(opts.requests), "--candidates", "20", "--partitions",
                        str(opts.partitions), "--seed", str(opts.seed), "--no-progress"],
                       check=True, capture_output=True)
        truth = reference_join(_values(d / "ev"), TruthConfig(window_s=WINDOW_S,
                                                              allowed_lateness_s=LATENESS_S))

        def join(name: str) -> list[str]:
            return [fr, "join", "--source", f"file:{d}/ev", "--output", f"file:{d}/{name}",
                    "--state", f"{d}/{name}-state", "--window-s", str(WINDOW_S),
                    "--lateness-s", str(LATENESS_S), "--flush", "--idle-timeout-s", "1",
                    "--no-progress"]

        rng = random.Random(opts.seed)
        for _ in range(opts.kills):
            proc = subprocess.Popen(join("killed"), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 2.0))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        res: dict[str, Any] = {"requests": opts.requests, "partitions": opts.partitions,
                               "kills": opts.kills, "window_s": WINDOW_S,
                               "allowed_lateness_s": LATENESS_S}
        rows = {}
        for name in ("straight1", "straight2", "killed"):
            subprocess.run(join(name), check=True, capture_output=True)
            parts = _values(d / name)
            batches = [decode_examples(v)[0] for v in parts]
            flat = [rb.to_pydict() for rb in batches if rb is not None]
            merged = {k: sum((f[k] for f in flat), []) for k in flat[0]} if flat else {}
            res[name] = compare(truth, merged)
            rows[name] = [rb.to_pylist() if rb is not None else [] for rb in batches]
        res["same_examples_in_order"] = rows["straight1"] == rows["straight2"] == rows["killed"]
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
