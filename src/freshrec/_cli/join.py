"""``freshrec join``: run the online joiner from a source log into an output log."""

from __future__ import annotations

import argparse
import json
import sys

from freshrec.stream.config import JoinerConfig, ValidationConfig
from freshrec.stream.join import Joiner
from freshrec.stream.open import open_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="input log spec (file:PATH, redis://...#NAME), or - to read it from stdin")
    p.add_argument("--partitions", type=int, default=None,
                   help="partitions of the source log (default: every partition it has; "
                        "fewer than it has is an error)")
    p.add_argument("--output", required=True, help="output log spec for the examples")
    p.add_argument("--state", required=True, help="state directory (LMDB, checkpoints)")
    p.add_argument("--dead-letter", default=None, help="log spec for bad events")
    p.add_argument("--quarantine", default=None, help="log spec for quarantined windows")
    p.add_argument("--window-s", type=int, default=600)
    p.add_argument("--lateness-s", type=int, default=30)
    p.add_argument("--actions", default="click", help="comma-separated action types")
    p.add_argument("--negative-rate", type=float, default=1.0)
    p.add_argument("--max-pending", type=int, default=100_000)
    p.add_argument("--idle-partition-s", type=float, default=5.0,
                   help="a partition with nothing to read this long stops holding the "
                        "watermark back")
    p.add_argument("--max-future-skew-s", type=int, default=3600,
                   help="records dated further ahead of their partition are held back and "
                        "dead-lettered unless the records after them confirm the jump")
    p.add_argument("--max-candidates", type=int, default=10_000,
                   help="impressions with more candidates are dead-lettered")
    p.add_argument("--validate-window-s", type=int, default=None,
                   help="enable stream validation with windows of this many seconds")
    p.add_argument("--min-positive-ratio", type=float, default=0.0)
    p.add_argument("--max-positive-ratio", type=float, default=1.0)
    p.add_argument("--min-join-rate", type=float, default=0.0)
    p.add_argument("--idle-timeout-s", type=float, default=2.0,
                   help="stop after the source was idle this long")
    p.add_argument("--flush", action="store_true", help="emit everything pending at the end")
    p.add_argument("--release", type=int, default=None,
                   help="release a quarantined window (its index) and exit")


def run(args: argparse.Namespace) -> int:
    source_spec = sys.stdin.readline().strip() if args.source == "-" else args.source
    validation = None
    if args.validate_window_s:
        validation = ValidationConfig(window_s=args.validate_window_s,
                                      min_positive_ratio=args.min_positive_ratio,
                                      max_positive_ratio=args.max_positive_ratio,
                                      min_join_rate=args.min_join_rate)
    cfg = JoinerConfig(window_s=args.window_s, allowed_lateness_s=args.lateness_s,
                       actions=tuple(a.strip() for a in args.actions.split(",") if a.strip()),
                       negative_rate=args.negative_rate, max_pending_in_memory=args.max_pending,
                       idle_partition_s=args.idle_partition_s,
                       max_future_skew_s=args.max_future_skew_s,
                       max_candidates=args.max_candidates, validation=validation)
    source = open_log(source_spec, partitions=args.partitions)
    output = open_log(args.output)
    side = {}
    if args.dead_letter:
        side["dead_letter"] = open_log(args.dead_letter)
    if args.quarantine:
        side["quarantine"] = open_log(args.quarantine)
    joiner = Joiner(source, output, args.state, cfg, side_logs=side)
    try:
        if args.release is not None:
            print(json.dumps({"released_examples": joiner.release(args.release)}))
            return 0
        from rich.progress import Progress, TextColumn

        with Progress(TextColumn("{task.description}"), transient=True) as bar:
            task = bar.add_task("join")
            idle = 0.0
            import time

            last = time.monotonic()
            before = -1
            while True:
                joiner.step(timeout_s=0.05)
                m = joiner.counters
                if m.get("events_in", 0) != before:
                    before = m.get("events_in", 0)
                    last = time.monotonic()
                    bar.update(task, description=(
                        f"join: events {m.get('events_in', 0):,} examples "
                        f"{m.get('examples_out', 0):,} dead {m.get('dead_letters', 0):,}"))
                idle = time.monotonic() - last
                if idle >= args.idle_timeout_s:
                    break
        if args.flush:
            joiner.flush()
        joiner.checkpoint()
        m = joiner.metrics()
        print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)},
                         sort_keys=True))
    finally:
        joiner.close()
        for log in (source, output, *side.values()):
            log.close()
    return 0
