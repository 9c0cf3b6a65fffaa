"""``freshrec watch --config CFG [--run-dir DIR ...] [--registry DIR] [--metrics-url URL ...]``.

Evaluates the ``ops.alerts`` rules of the config every ``ops.watch_interval_s`` over what the
system writes (the same data as ``freshrec dashboard``) and fires each alert that starts to
the log and to ``ops.webhook`` (retried, ``ops.webhook_retries``). ``--once`` evaluates once
and prints the firing alerts as JSON; the exit status is then 1 when any fires.

With ``ops.rollback.enabled`` and a registry (``--registry``, or the config's), it also
measures the serving AUC from the ``join`` section's logs (the server's impressions with
their scores, joined with the joiner's examples) and rolls the registry back to the last
good version on a sustained drop, with a critical alert (:mod:`freshrec.ops.serving`).
"""

from __future__ import annotations

import argparse
import json
import time

from freshrec._cli.dashboard import add_source_arguments, collector
from freshrec._cli.options import Shorthand, add_config_arguments, config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, [
        Shorthand("--webhook", "ops.webhook", "URL each alert is POSTed to"),
        Shorthand("--interval", "ops.watch_interval_s", "seconds between evaluations", float),
    ])
    add_source_arguments(p)
    p.add_argument("--once", action="store_true", help="evaluate once, print, exit")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until interrupted)")


def run(args: argparse.Namespace) -> int:
    from freshrec.ops.alerts import Watcher

    cfg = config(args)
    watcher = Watcher(cfg, collector(args, cfg))
    if args.once:
        watcher.check()
        print(json.dumps(watcher.status()))
        return 1 if watcher.active else 0
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        while deadline is None or time.monotonic() < deadline:
            watcher.check()
            time.sleep(cfg.ops.watch_interval_s)
    except KeyboardInterrupt:
        pass
    print(json.dumps(watcher.status()))
    return 0
