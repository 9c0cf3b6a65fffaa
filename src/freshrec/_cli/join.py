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
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from freshrec._cli.options import Shorthand, add_config_arguments, document, section
from freshrec.errors import ConfigError, brief
from freshrec.stream.config import JoinJobConfig
from freshrec.stream.job import run_job, worker_command
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
        spec = sys.stdin.readline().strip()
        if not spec or spec.startswith(("{", "[")) or not spec.isprintable():
            raise ConfigError(
                f"--source -: the first line of stdin must name the input log (file:PATH, "
                f"redis://HOST:PORT/DB#NAME, ...), got {brief(spec)}; the joiner reads its "
                f"events from that log, not from stdin")
        job = dataclasses.replace(job, source=spec)
    return job


def run(args: argparse.Namespace) -> int:
    job = _job(args)
    if job.workers > 1:
        source = open_log(job.source, partitions=job.source_partitions)
        n = source.partitions
        source.close()
        owned = parse_partitions(job.partitions, n) if job.partitions else tuple(range(n))
        for spec in (job.output, job.dead_letter, job.quarantine):
            if spec:
                open_log(spec, partitions=n).close()  # created before the workers race
        return _supervise(args, job, split_partitions(owned, job.workers))
    m = run_job(job, release=args.release)
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)}, sort_keys=True))
    return 0


def _supervise(args: argparse.Namespace, job: JoinJobConfig,
               groups: list[tuple[int, ...]]) -> int:
    """Run one ``freshrec join`` process per group of partitions; sum their metrics.

    The workers (:func:`~freshrec.stream.job.main`, which imports no torch) read the ``join``
    section of the document resolved here (``STATE/join.yaml``: the file, the command line's
    overrides and the source read from stdin), each with its partitions and state.
    """
    doc = document(args)
    doc["join"] = json.loads(json.dumps(dataclasses.asdict(job)))  # tuples as lists
    resolved = Path(job.state) / "join.yaml"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    resolved.write_text(yaml.safe_dump(doc, sort_keys=False))
    cmds = {g: worker_command(resolved, g, Path(job.state) / f"p{format_partitions(g)}")
            for g in groups}
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
