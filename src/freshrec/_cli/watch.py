"""``freshrec watch --config CFG [--run-dir DIR ...] [--registry DIR] [--metrics-url URL ...]``.

Evaluates the ``ops.alerts`` rules of the config every ``ops.watch_interval_s`` over what the
system writes (the same data as ``freshrec dashboard``) and fires each alert that starts to
the log and to ``ops.webhook`` (retried, ``ops.webhook_retries``). ``--once`` evaluates once
and prints the firing alerts as JSON; the exit status is then 1 when any fires.

With ``ops.rollback.enabled`` and a registry (``--registry``, or the config's), it also
measures the serving AUC from the ``join`` section's logs (the server's impressions with
their scores, joined with the joiner's examples) and rolls the registry back to the last
good version on a sustained drop, with a critical alert (:mod:`freshrec.ops.serving`).

Without ``--once`` it keeps a checkpoint (:class:`~freshrec.ops.serving.WatchCheckpoint`) in
``--state-dir`` (``ops.watch_state_dir``; default ``watch/`` in the first run directory) every
``ops.watch_checkpoint_s`` and when it stops (SIGTERM, SIGINT, ``--duration``), and resumes
from it on a restart: the logs are read on from the saved positions, the open window and the
rollback guard's streak go on. A damaged checkpoint stops it with an error naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from freshrec._cli.dashboard import add_source_arguments, collector, sources
from freshrec._cli.options import Shorthand, add_config_arguments, config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, [
        Shorthand("--webhook", "ops.webhook", "URL each alert is POSTed to"),
        Shorthand("--interval", "ops.watch_interval_s", "seconds between evaluations", float),
        Shorthand("--state-dir", "ops.watch_state_dir", "where the checkpoint is kept"),
    ])
    add_source_arguments(p)
    p.add_argument("--once", action="store_true", help="evaluate once, print, exit")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until interrupted)")


log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    from freshrec.ops.alerts import Watcher
    from freshrec.ops.serving import WatchCheckpoint

    cfg = config(args)
    watcher = Watcher(cfg, collector(args, cfg))
    if args.once:
        watcher.check()
        print(json.dumps(watcher.status()))
        return 1 if watcher.active else 0
    run_dirs, _ = sources(args, cfg)
    state_dir = cfg.ops.watch_state_dir or (str(Path(run_dirs[0]) / "watch") if run_dirs
                                            else "")
    ckpt = WatchCheckpoint(state_dir) if state_dir else None
    if ckpt is None:
        log.warning("watch: no state dir (--state-dir or a run dir): a restart reads the "
                    "logs from the start")
    elif not ckpt.restore(watcher):
        log.info("watch: no checkpoint at %s: reading the logs from the start", ckpt.path)
    # a signal only asks to stop: a check is never cut short, so the checkpoint written
    # after it is consistent
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    saved = time.monotonic()
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        watcher.check()
        if ckpt is not None and time.monotonic() - saved >= cfg.ops.watch_checkpoint_s:
            ckpt.write(watcher)
            saved = time.monotonic()
        wait = cfg.ops.watch_interval_s
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        stop.wait(wait)
    if ckpt is not None:
        ckpt.write(watcher)
    print(json.dumps(watcher.status()))
    return 0
