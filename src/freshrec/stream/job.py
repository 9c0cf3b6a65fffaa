"""One joiner process of a ``join`` job: ``freshrec join`` and each of its ``--workers``.

:func:`run_job` opens the logs a :class:`~freshrec.stream.config.JoinJobConfig` names, runs a
:class:`~freshrec.stream.join.Joiner` over its partitions until the source has been idle
``idle_timeout_s`` (then flushes when ``flush`` is set) and returns the joiner's metrics.
:func:`tune_memory` is the memory setting of every joiner process (the command's, its
workers' and the benchmarks'): the garbage-collector thresholds of :func:`tune_gc` and a heap
that keeps freed memory (:func:`freshrec._heap.retain_freed_heap`).

``python -m freshrec.stream.job CONFIG PARTITIONS STATE`` is the entry of one worker of
``freshrec join --workers N``: it reads only the ``join`` section of the document the parent
validated and resolved, so it imports neither torch nor the model packages (a worker restarted
on a loaded machine is back in about a second, not a minute). It exits 2 on a config or input
error (which the supervisor does not retry) and prints the metrics as one JSON line.

Examples
--------
>>> worker_command("runs/join/join.yaml", (0, 1), "runs/join/p0-1")[-3:]
['runs/join/join.yaml', '0-1', 'runs/join/p0-1']
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from freshrec._heap import retain_freed_heap
from freshrec._validate import build_config
from freshrec.errors import ConfigError, FreshrecError
from freshrec.stream.config import JoinJobConfig
from freshrec.stream.join import Joiner
from freshrec.stream.open import open_log
from freshrec.stream.workers import format_partitions, parse_partitions

__all__ = ["JOINER_GC_THRESHOLDS", "tune_gc", "tune_memory", "run_job", "worker_command",
           "main"]

#: Python's cyclic collector thresholds for a joiner process (the defaults are 700, 10, 10).
#: A joiner holds its pending impressions for minutes: with the defaults the collector keeps
#: traversing them and took a third of a 1-candidate event's CPU time
#: (``benchmarks/stream/exp_join_costs.py``: 57-76 us per event, 43 us with these, 36-42 us
#: with the collector off; quiet machine). Reference cycles are still collected.
JOINER_GC_THRESHOLDS = (200_000, 50, 50)


def tune_gc() -> None:
    """Freeze the objects made so far (config, imports, a joiner's restored state) and collect
    cycles less often (:data:`JOINER_GC_THRESHOLDS`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*JOINER_GC_THRESHOLDS)


def tune_memory(retain_heap: bool = True) -> None:
    """:func:`tune_gc`, and (``retain_heap``, the ``join`` section's) a heap that keeps what
    the joiner frees instead of faulting the same pages in again for every batch
    (:func:`freshrec._heap.retain_freed_heap`: 35-candidate joins went from 35,000 page
    faults per 420,000 examples to a few hundred, ``docs/stream.md`` round 6)."""
    tune_gc()
    if retain_heap:
        retain_freed_heap()


def run_job(job: JoinJobConfig, *, release: int | None = None) -> dict[str, Any]:
    """Run the joiner of ``job`` (one process over ``job.partitions``, all when None) until
    its source has been idle ``idle_timeout_s``; returns :meth:`Joiner.metrics`. With
    ``release``, release that quarantined window instead and return
    ``{"released_examples": n}``."""
    source = open_log(job.source, partitions=job.source_partitions)
    n = source.partitions
    owned = parse_partitions(job.partitions, n) if job.partitions else tuple(range(n))
    # logs written by several workers need one partition per source partition
    each = n if job.workers > 1 or len(owned) < n else None
    logs = [source]
    try:
        output = open_log(job.output, partitions=each)
        logs.append(output)
        side = {}
        for name in ("dead_letter", "quarantine"):
            spec = getattr(job, name)
            if spec:
                side[name] = open_log(spec, partitions=each)
                logs.append(side[name])
        joiner = Joiner(source, output, job.state, job, side_logs=side, partitions=owned)
        try:
            tune_memory(job.retain_heap)
            if release is not None:
                return {"released_examples": joiner.release(release)}
            _drive(joiner, job)
            return joiner.metrics()
        finally:
            joiner.close()
    finally:
        for log in logs:
            log.close()


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


def worker_command(config: str | Path, partitions: Sequence[int], state: str | Path
                   ) -> list[str]:
    """The command line of one worker: :func:`main` over ``partitions`` with its ``state``."""
    return [sys.executable, "-m", "freshrec.stream.job", str(config),
            format_partitions(partitions), str(state)]


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry: ``CONFIG PARTITIONS STATE`` (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if len(args) != 3:
            raise ConfigError(f"usage: python -m freshrec.stream.job CONFIG PARTITIONS STATE, "
                              f"got {args!r}")
        path, parts, state = args
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the join document: {e}") from e
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(doc).__name__}")
        job = build_config(JoinJobConfig, doc.get("join"), f"{path}: join")
        job = dataclasses.replace(job, partitions=parts, state=state, workers=1,
                                  progress=False)
        m = run_job(job)
    except FreshrecError as e:
        print(f"freshrec join worker: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)},
                     sort_keys=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
