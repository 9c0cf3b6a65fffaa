"""``freshrec simulate``: write a simulated click stream (or an Open Bandit replay) to a log.

Prints the log spec on stdout when done, so ``freshrec simulate ... | freshrec join --source -``
chains the two.
"""

from __future__ import annotations

import argparse
import sys

from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig, write_to_log
from freshrec.stream.open import open_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", required=True,
                   help="target log: file:PATH, redis://HOST:PORT/DB#NAME or kafka://HOST/TOPIC")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--events", type=int, default=None, help="stop after this many events")
    p.add_argument("--requests", type=int, default=None, help="stop after this many requests")
    p.add_argument("--rate", type=float, default=None,
                   help="events per wall second (default: as fast as possible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--requests-per-s", type=float, default=200.0,
                   help="request rate in event time")
    p.add_argument("--no-true-p", action="store_true", help="omit true click probabilities")
    p.add_argument("--obd", default=None,
                   help="replay an Open Bandit campaign directory instead of simulating")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    log = open_log(args.log, partitions=args.partitions)
    if args.obd:
        from freshrec.data.obd_replay import open_bandit_events

        records = open_bandit_events(args.obd)
    else:
        cfg = SimulatorConfig(seed=args.seed, n_users=args.users, n_items=args.items,
                              candidates=args.candidates, requests_per_s=args.requests_per_s,
                              true_probabilities=not args.no_true_p)
        if args.events is None and args.requests is None:
            args.requests = 1000
        records = ClickStreamSimulator(cfg).records(n_requests=args.requests)
    progress = None
    bar = None
    if not args.no_progress:
        from rich.progress import Progress

        bar = Progress(transient=True, console=None)
        task = bar.add_task("simulate", total=args.events)
        bar.start()

        def progress(n: int) -> None:
            bar.update(task, completed=n)

    try:
        n = write_to_log(records, log, n_events=args.events, rate=args.rate, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
        log.close()
    print(f"wrote {n} events to {args.log}", file=sys.stderr)
    print(args.log)
    return 0
