"""``freshrec demo [--duration S] [--workdir DIR] [--rate R] [--redis URL]``: the whole loop.

Serving, joining and online training run as child processes; simulated users send requests
and clicks; a live table shows the loop; at the end a summary table and where the logs,
registry, metrics and plot were written. See :mod:`freshrec.demo`.
"""

from __future__ import annotations

import argparse

from freshrec.demo import DemoConfig, run_demo, summary_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    p.add_argument("--duration", type=float, default=d.duration_s,
                   help="seconds of traffic once the loop is up (default %(default)g)")
    p.add_argument("--workdir", default=None,
                   help="work directory (default: runs/demo-<timestamp>)")
    p.add_argument("--rate", type=float, default=d.rate, help="requests per second")
    p.add_argument("--candidates", type=int, default=d.candidates,
                   help="candidates per request")
    p.add_argument("--users", type=int, default=d.users, help="simulated users")
    p.add_argument("--items", type=int, default=d.items, help="simulated items")
    p.add_argument("--window-s", type=int, default=d.window_s,
                   help="the joiner's label window (event-time seconds)")
    p.add_argument("--lateness-s", type=int, default=d.lateness_s,
                   help="the joiner's allowed lateness (seconds)")
    p.add_argument("--sync-s", type=float, default=d.sync_s,
                   help="seconds between the trainer's sparse deltas")
    p.add_argument("--redis", default=None,
                   help="redis://HOST:PORT/DB: Redis Streams for the logs (default: file logs)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-live", action="store_true",
                   help="print a progress line every 5 s instead of the live table")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    config = DemoConfig(duration_s=args.duration, workdir=args.workdir, rate=args.rate,
                        candidates=args.candidates, users=args.users, items=args.items,
                        window_s=args.window_s, lateness_s=args.lateness_s,
                        sync_s=args.sync_s, redis=args.redis, seed=args.seed)
    out = run_demo(config, live=False if args.no_live else None)
    console = Console()
    if out["summary"]:
        console.print(summary_table(out["summary"]))
    p = out["paths"]
    console.print(f"logs:      {p['events']}  {p['examples']}\n"
                  f"registry:  {p['registry']}  (freshrec registry ls --dir {p['registry']})\n"
                  f"processes: {p['proc']}/{{serve,join,train}}.log\n"
                  f"metrics:   {p['metrics']}\n"
                  f"plot:      {out['plot'] or 'not written (pip install .[experiments])'}",
                  highlight=False, soft_wrap=True)
    return 130 if out["interrupted"] else 0
