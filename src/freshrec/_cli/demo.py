"""``freshrec demo [--config configs/demo.yaml] [--duration S] [...]``: the whole loop.

Serving, joining and online training run as child processes; simulated users send requests
and clicks; a live table shows the loop; at the end a summary table and where the logs,
registry, metrics and plot were written. Every setting is a key of the config document
(``configs/demo.yaml``); the flags are shorthands for some of them. See :mod:`freshrec.demo`.
"""

from __future__ import annotations

import argparse

from freshrec._cli.options import Shorthand, add_config_arguments, config
from freshrec._resources import shipped_dir

SHORTHANDS = [
    Shorthand("--duration", "demo.duration_s", "seconds of traffic once the loop is up",
              float),
    Shorthand("--until-examples", "demo.until_examples_trained",
              "stop once the trainer trained this many examples and the server serves a "
              "version > 1 (--duration is then the timeout)", int),
    Shorthand("--workdir", "demo.workdir", "work directory (null: runs/demo-<timestamp>)"),
    Shorthand("--rate", "simulate.requests_per_s", "requests per second", float),
    Shorthand("--candidates", "simulate.candidates", "candidates per request", int),
    Shorthand("--users", "simulate.n_users", "simulated users", int),
    Shorthand("--items", "simulate.n_items", "simulated items", int),
    Shorthand("--window-s", "join.window_s", "the joiner's label window (event-time seconds)",
              int),
    Shorthand("--lateness-s", "join.allowed_lateness_s",
              "the joiner's allowed lateness (seconds)", int),
    Shorthand("--sync-s", "sync.sparse_interval_s",
              "seconds between the trainer's sparse deltas", float),
    Shorthand("--redis", "demo.redis",
              "redis://HOST:PORT/DB: Redis Streams for the logs (null: file logs)"),
    Shorthand("--user-store", "demo.user_store",
              "memory or redis: the user table in Redis, shared by trainer and server "
              "(a private redis-server unless --redis)"),
    Shorthand("--seed", "simulate.seed", "seed of the simulator and of the drawn clicks", int),
    Shorthand("--no-live", "demo.live",
              "print a progress line every 5 s instead of the live table", value=False),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SHORTHANDS, config_default=str(shipped_dir("configs") / "demo.yaml"))


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from freshrec.demo import run_demo, summary_table
    from freshrec.demo.display import print_outputs

    out = run_demo(config(args))
    console = Console()
    if out["summary"]:
        console.print(summary_table(out["summary"]))
    print_outputs(console, out["paths"], out["plot"])
    return 130 if out["interrupted"] else 0
