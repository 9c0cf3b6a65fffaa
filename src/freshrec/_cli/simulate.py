"""``freshrec simulate``: write a simulated click stream (or an Open Bandit replay) to a log.

Settings are the ``simulate`` section of the config document
(:class:`~freshrec.data.simulate.SimulateJobConfig`); every flag is a shorthand for one of
its keys. Prints the log spec on stdout when done, so
``freshrec simulate ... | freshrec join --source -`` chains the two.
"""

from __future__ import annotations

import argparse
import sys

from freshrec._cli.options import Shorthand, add_config_arguments, section
from freshrec.data.simulate import ClickStreamSimulator, SimulateJobConfig, write_to_log
from freshrec.errors import ConfigError
from freshrec.stream.open import open_log

SHORTHANDS = [
    Shorthand("--log", "simulate.log",
              "target log: file:PATH, redis://HOST:PORT/DB#NAME or kafka://HOST/TOPIC"),
    Shorthand("--partitions", "simulate.partitions", "partitions of a new log", int),
    Shorthand("--events", "simulate.events", "stop after this many events", int),
    Shorthand("--requests", "simulate.requests", "stop after this many requests (with "
              "neither: 1000)", int),
    Shorthand("--rate", "simulate.events_per_wall_s", "events per wall second (null: as "
              "fast as possible)", float),
    Shorthand("--seed", "simulate.seed", "same seed, same stream", int),
    Shorthand("--users", "simulate.n_users", "initial users", int),
    Shorthand("--items", "simulate.n_items", "initial items", int),
    Shorthand("--candidates", "simulate.candidates", "candidates per request", int),
    Shorthand("--requests-per-s", "simulate.requests_per_s", "request rate in event time",
              float),
    Shorthand("--no-true-p", "simulate.true_probabilities", "omit true click probabilities",
              value=False),
    Shorthand("--obd", "simulate.obd",
              "replay an Open Bandit campaign directory instead of simulating"),
    Shorthand("--no-progress", "simulate.progress", "no progress bar", value=False),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SHORTHANDS)


def run(args: argparse.Namespace) -> int:
    job: SimulateJobConfig = section(args, "simulate")
    if not job.log:
        raise ConfigError("no log to write to: pass --log or set simulate.log")
    log = open_log(job.log, partitions=job.partitions)
    requests = job.requests
    if job.obd:
        from freshrec.data.obd_replay import open_bandit_events

        records = open_bandit_events(job.obd)
    else:
        if job.events is None and requests is None:
            requests = 1000
        records = ClickStreamSimulator(job).records(n_requests=requests)
    progress = None
    bar = None
    if job.progress:
        from rich.progress import Progress

        bar = Progress(transient=True, console=None)
        task = bar.add_task("simulate", total=job.events)
        bar.start()

        def progress(n: int) -> None:
            bar.update(task, completed=n)

    try:
        n = write_to_log(records, log, n_events=job.events, rate=job.events_per_wall_s,
                         progress=progress)
    finally:
        if bar is not None:
            bar.stop()
        log.close()
    print(f"wrote {n} events to {job.log}", file=sys.stderr)
    print(job.log)
    return 0
