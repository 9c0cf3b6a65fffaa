"""``freshrec join``: run the online joiner from a source log into an output log.

``--workers N`` divides the source's partitions among N worker processes (each with its own
state directory ``STATE/p<partitions>``) and restarts a worker that dies; ``--partitions a-b``
runs one worker of many (on any machine). See :mod:`freshrec.stream.workers`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from freshrec.stream.config import JoinerConfig, ValidationConfig
from freshrec.stream.join import Joiner
from freshrec.stream.open import open_log
from freshrec.stream.workers import (
    Supervisor,
    format_partitions,
    parse_partitions,
    split_partitions,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="input log spec (file:PATH, redis://...#NAME), or - to read it from stdin")
    p.add_argument("--partitions", default=None,
                   help="source partitions this joiner reads, e.g. 0-3 or 0,2 (default: all "
                        "of them; the source's count is read from the log itself)")
    p.add_argument("--source-partitions", type=int, default=None,
                   help="partitions the source log has (default: what the log records; "
                        "fewer than it has is an error)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes the partitions are divided among (restarted when "
                        "they die); their output log has one partition per source partition")
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
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.add_argument("--release", type=int, default=None,
                   help="release a quarantined window (its index) and exit")


def _config(args: argparse.Namespace) -> JoinerConfig:
    validation = None
    if args.validate_window_s:
        validation = ValidationConfig(window_s=args.validate_window_s,
                                      min_positive_ratio=args.min_positive_ratio,
                                      max_positive_ratio=args.max_positive_ratio,
                                      min_join_rate=args.min_join_rate)
    return JoinerConfig(window_s=args.window_s, allowed_lateness_s=args.lateness_s,
                        actions=tuple(a.strip() for a in args.actions.split(",") if a.strip()),
                        negative_rate=args.negative_rate,
                        max_pending_in_memory=args.max_pending,
                        idle_partition_s=args.idle_partition_s,
                        max_future_skew_s=args.max_future_skew_s,
                        max_candidates=args.max_candidates, validation=validation)


def run(args: argparse.Namespace) -> int:
    if args.source == "-":
        args.source = sys.stdin.readline().strip()
    cfg = _config(args)
    source = open_log(args.source, partitions=args.source_partitions)
    n = source.partitions
    owned = parse_partitions(args.partitions, n) if args.partitions else tuple(range(n))
    # logs written by several workers need one partition per source partition
    each = n if args.workers > 1 or len(owned) < n else None
    if args.workers > 1:
        source.close()
        for spec in (args.output, args.dead_letter, args.quarantine):
            if spec:
                open_log(spec, partitions=each).close()  # created before the workers race
        return _supervise(args, split_partitions(owned, args.workers))
    output = open_log(args.output, partitions=each)
    side = {}
    if args.dead_letter:
        side["dead_letter"] = open_log(args.dead_letter, partitions=each)
    if args.quarantine:
        side["quarantine"] = open_log(args.quarantine, partitions=each)
    joiner = Joiner(source, output, args.state, cfg, side_logs=side, partitions=owned)
    try:
        if args.release is not None:
            print(json.dumps({"released_examples": joiner.release(args.release)}))
            return 0
        _drive(joiner, args)
        m = joiner.metrics()
        print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)},
                         sort_keys=True))
    finally:
        joiner.close()
        for log in (source, output, *side.values()):
            log.close()
    return 0


def _drive(joiner: Joiner, args: argparse.Namespace) -> None:
    """Step until the source was idle ``--idle-timeout-s``; flush with ``--flush``."""
    from rich.progress import Progress, TextColumn

    with Progress(TextColumn("{task.description}"), transient=True,
                  disable=args.no_progress) as bar:
        task = bar.add_task("join")
        last = time.monotonic()
        before = -1
        while time.monotonic() - last < args.idle_timeout_s:
            joiner.step(timeout_s=0.05)
            m = joiner.counters
            if m.get("events_in", 0) != before:
                before = m.get("events_in", 0)
                last = time.monotonic()
                bar.update(task, description=(
                    f"join: events {m.get('events_in', 0):,} examples "
                    f"{m.get('examples_out', 0):,} dead {m.get('dead_letters', 0):,}"))
    if args.flush:
        joiner.flush()
    joiner.checkpoint()


def _supervise(args: argparse.Namespace, groups: list[tuple[int, ...]]) -> int:
    """Run one ``freshrec join`` process per group of partitions; sum their metrics."""
    argv = _worker_argv(args)
    exe = os.path.join(os.path.dirname(sys.executable), "freshrec")
    cmds = {}
    for g in groups:
        name = format_partitions(g)
        cmds[g] = [exe, *argv, "--partitions", name, "--state",
                   str(Path(args.state) / f"p{name}"), "--no-progress"]
    exits = Supervisor(cmds).run()
    total: dict[str, Any] = {"workers": len(groups)}
    for w in exits:
        try:
            m = json.loads(w.last_line) if w.returncode == 0 else {}
        except json.JSONDecodeError:
            m = {}
        for k, v in m.items():
            if (isinstance(v, int) and not isinstance(v, bool)) or k.endswith("_per_s"):
                total[k] = total.get(k, 0) + v
        total.setdefault("worker_restarts", 0)
        total["worker_restarts"] += w.restarts
    failed = [format_partitions(w.partitions) for w in exits if w.returncode != 0]
    total["failed_workers"] = failed
    print(json.dumps(total, sort_keys=True))
    return 1 if failed else 0


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The ``freshrec join`` options of ``args`` a worker shares (not the ones the supervisor
    sets per worker, nor flags that are off)."""
    out = ["join"]
    for k, v in vars(args).items():
        if k in _PER_WORKER or k.startswith("_") or v is None or v is False:
            continue
        out += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return out


_PER_WORKER = {"command", "verbose", "version", "workers", "partitions", "state", "release",
               "no_progress"}
