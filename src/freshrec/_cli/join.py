"""``freshrec join``: run the online joiner from a source log into an output log.

Settings are the ``join`` section of the config document
(:class:`~freshrec.stream.config.JoinJobConfig`: the joiner's settings plus the logs, the
state directory and the workers); every flag is a shorthand for one of its keys.
``--workers N`` divides the source's partitions among N worker processes (each with its own
state directory ``STATE/p<partitions>``) and restarts a worker that dies; ``--partitions a-b``
runs one worker of many (on any machine). See :mod:`freshrec.stream.workers`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from freshrec._cli.options import Shorthand, add_config_arguments, document, section
from freshrec.errors import ConfigError
from freshrec.stream.config import JoinJobConfig
from freshrec.stream.join import Joiner
from freshrec.stream.open import open_log
from freshrec.stream.workers import (
    Supervisor,
    format_partitions,
    parse_partitions,
    split_partitions,
)


def _actions(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


SHORTHANDS = [
    Shorthand("--source", "join.source",
              "input log spec (file:PATH, redis://...#NAME), or - to read it from stdin"),
    Shorthand("--partitions", "join.partitions", "source partitions this joiner reads, e.g. "
              "0-3 or 0,2 (null: all of them; the source's count is read from the log)"),
    Shorthand("--source-partitions", "join.source_partitions", "partitions the source log "
              "has (null: what the log records; fewer than it has is an error)", int),
    Shorthand("--workers", "join.workers", "worker processes the partitions are divided "
              "among (restarted when they die); their output log has one partition per "
              "source partition", int),
    Shorthand("--output", "join.output", "output log spec for the examples"),
    Shorthand("--state", "join.state", "state directory (LMDB, checkpoints)"),
    Shorthand("--dead-letter", "join.dead_letter", "log spec for bad events"),
    Shorthand("--quarantine", "join.quarantine", "log spec for quarantined windows"),
    Shorthand("--window-s", "join.window_s", "label window (event-time seconds)", int),
    Shorthand("--lateness-s", "join.allowed_lateness_s", "allowed lateness (seconds)", int),
    Shorthand("--actions", "join.actions", "comma-separated action types", _actions),
    Shorthand("--negative-rate", "join.negative_rate", "keep-rate of negatives", float),
    Shorthand("--max-pending", "join.max_pending_in_memory",
              "pending requests held in memory (older ones spill to LMDB)", int),
    Shorthand("--idle-partition-s", "join.idle_partition_s", "a partition with nothing to "
              "read this long stops holding the watermark back", float),
    Shorthand("--max-future-skew-s", "join.max_future_skew_s", "records dated further ahead "
              "of their partition are held back and dead-lettered unless the records after "
              "them confirm the jump", int),
    Shorthand("--max-candidates", "join.max_candidates",
              "impressions with more candidates are dead-lettered", int),
    Shorthand("--validate-window-s", "join.validation.window_s",
              "enable stream validation with windows of this many seconds", int),
    Shorthand("--min-positive-ratio", "join.validation.min_positive_ratio",
              "stream validation: least share of positives per window", float),
    Shorthand("--max-positive-ratio", "join.validation.max_positive_ratio",
              "stream validation: largest share of positives per window", float),
    Shorthand("--min-join-rate", "join.validation.min_join_rate",
              "stream validation: least share of impressions with an action", float),
    Shorthand("--idle-timeout-s", "join.idle_timeout_s",
              "stop after the source was idle this long (.inf: never)", float),
    Shorthand("--flush", "join.flush", "emit everything pending at the end", value=True),
    Shorthand("--no-progress", "join.progress", "no progress line", value=False),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SHORTHANDS)
    p.add_argument("--release", type=int, default=None,
                   help="release a quarantined window (its index) and exit")


def _job(args: argparse.Namespace) -> JoinJobConfig:
    """The ``join`` section, checked for its locations (``-`` read from stdin)."""
    job: JoinJobConfig = section(args, "join")
    for key, flag in (("source", "--source"), ("output", "--output"), ("state", "--state")):
        if not getattr(job, key):
            raise ConfigError(f"freshrec join needs join.{key}: pass {flag} or set it in the "
                              f"config document")
    if job.source == "-":
        job = dataclasses.replace(job, source=sys.stdin.readline().strip())
    return job


#: Python's cyclic collector thresholds for a joiner process (the defaults are 700, 10, 10).
#: A joiner holds its pending impressions for minutes: with the defaults the collector keeps
#: traversing them and took a third of a 1-candidate event's CPU time
#: (``benchmarks/stream/exp_join_costs.py``: 57-76 us per event, 43 us with these, 36-42 us
#: with the collector off; quiet machine). Reference cycles are still collected.
JOINER_GC_THRESHOLDS = (200_000, 50, 50)


def _tune_gc() -> None:
    """Freeze the objects made at start-up (config, imports) and collect cycles less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*JOINER_GC_THRESHOLDS)


def run(args: argparse.Namespace) -> int:
    job = _job(args)
    source = open_log(job.source, partitions=job.source_partitions)
    n = source.partitions
    owned = parse_partitions(job.partitions, n) if job.partitions else tuple(range(n))
    # logs written by several workers need one partition per source partition
    each = n if job.workers > 1 or len(owned) < n else None
    if job.workers > 1:
        source.close()
        for spec in (job.output, job.dead_letter, job.quarantine):
            if spec:
                open_log(spec, partitions=each).close()  # created before the workers race
        return _supervise(args, job, split_partitions(owned, job.workers))
    output = open_log(job.output, partitions=each)
    side = {}
    if job.dead_letter:
        side["dead_letter"] = open_log(job.dead_letter, partitions=each)
    if job.quarantine:
        side["quarantine"] = open_log(job.quarantine, partitions=each)
    joiner = Joiner(source, output, job.state, job, side_logs=side, partitions=owned)
    _tune_gc()
    try:
        if args.release is not None:
            print(json.dumps({"released_examples": joiner.release(args.release)}))
            return 0
        _drive(joiner, job)
        m = joiner.metrics()
        print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)},
                         sort_keys=True))
    finally:
        joiner.close()
        for log in (source, output, *side.values()):
            log.close()
    return 0


def _drive(joiner: Joiner, job: JoinJobConfig) -> None:
    """Step until the source was idle ``idle_timeout_s``; then flush when ``flush``."""
    from rich.progress import Progress, TextColumn

    with Progress(TextColumn("{task.description}"), transient=True,
                  disable=not job.progress) as bar:
        task = bar.add_task("join")
        last = time.monotonic()
        before = -1
        while time.monotonic() - last < job.idle_timeout_s:
            joiner.step(timeout_s=0.05)
            m = joiner.counters
            if m.get("events_in", 0) != before:
                before = m.get("events_in", 0)
                last = time.monotonic()
                bar.update(task, description=(
                    f"join: events {m.get('events_in', 0):,} examples "
                    f"{m.get('examples_out', 0):,} dead {m.get('dead_letters', 0):,}"))
    if job.flush:
        joiner.flush()
    joiner.checkpoint()


def _supervise(args: argparse.Namespace, job: JoinJobConfig,
               groups: list[tuple[int, ...]]) -> int:
    """Run one ``freshrec join`` process per group of partitions; sum their metrics.

    The workers read the document resolved here (``STATE/join.yaml``: the file, the command
    line's overrides and the source read from stdin), each with its partitions and state.
    """
    doc = document(args)
    doc["join"] = json.loads(json.dumps(dataclasses.asdict(job)))  # tuples as lists
    resolved = Path(job.state) / "join.yaml"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    resolved.write_text(yaml.safe_dump(doc, sort_keys=False))
    exe = os.path.join(os.path.dirname(sys.executable), "freshrec")
    cmds = {}
    for g in groups:
        name = format_partitions(g)
        cmds[g] = [exe, "join", "--config", str(resolved), "--partitions", name, "--state",
                   str(Path(job.state) / f"p{name}"), "--workers", "1", "--no-progress"]
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
