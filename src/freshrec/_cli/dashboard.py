"""``freshrec dashboard --config CFG [--run-dir DIR ...] [--registry DIR] [--metrics-url URL ...]``.

Serves the operations page generated from the config (:mod:`freshrec.ops`) on loopback and
prints its URL; ``--export DIR`` writes it as static files instead (``index.html`` opens from
disk), and ``--grafana FILE`` / ``--rules FILE`` write a Grafana dashboard JSON and Prometheus
alerting rules generated from the same config (the exit follows when only files are asked
for). The page also serves ``/metrics``: the collected values for a Prometheus server.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from freshrec._cli.options import add_config_arguments, config

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig
    from freshrec.ops.collect import Collector


def add_source_arguments(p: argparse.ArgumentParser, *, metrics: bool = True) -> None:
    """``--run-dir``, ``--registry`` (and ``--metrics-url``): what the ops commands read."""
    p.add_argument("--run-dir", action="append", default=[], metavar="DIR",
                   help="a run directory whose metrics.jsonl is read (repeatable; default: "
                        "train.run_dir of the config when set)")
    p.add_argument("--registry", metavar="DIR", default=None,
                   help="the registry (default: online.registry or serve.registry)")
    if metrics:
        p.add_argument("--metrics-url", action="append", default=[], metavar="URL",
                       help="a Prometheus endpoint to scrape, e.g. "
                            "http://127.0.0.1:8000/metrics (repeatable)")
        p.add_argument("--prometheus-url", default=None, metavar="URL",
                       help="a Prometheus server (http://HOST:PORT) asked for the panels' "
                            "PromQL over the last hour (/api/v1/query_range) where the other "
                            "sources have no data")


def sources(args: argparse.Namespace, cfg: FreshrecConfig) -> tuple[list[str], str | None]:
    """The run directories and the registry the command reads (flags, else the config)."""
    run_dirs = args.run_dir or ([cfg.train.run_dir] if cfg.train.run_dir else [])
    return run_dirs, args.registry or cfg.online.registry or cfg.serve.registry or None


def collector(args: argparse.Namespace, cfg: FreshrecConfig) -> Collector:
    """The :class:`~freshrec.ops.collect.Collector` of the command's sources."""
    from freshrec.ops.collect import Collector

    run_dirs, registry = sources(args, cfg)
    return Collector(cfg, run_dirs=run_dirs, registry=registry,
                     metrics_urls=getattr(args, "metrics_url", []),
                     prometheus_url=getattr(args, "prometheus_url", None))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, [])
    add_source_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    p.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    p.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="seconds between scrapes and page refreshes")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop serving after S seconds (default: until interrupted)")
    p.add_argument("--export", metavar="DIR", help="write the page as static files to DIR")
    p.add_argument("--grafana", metavar="FILE", help="write a Grafana dashboard JSON")
    p.add_argument("--rules", metavar="FILE", help="write Prometheus alerting rules (YAML)")
    p.add_argument("--title", default=None, help="page title (default: the config file name)")


def run(args: argparse.Namespace) -> int:
    from freshrec.ops.grafana import grafana_dashboard
    from freshrec.ops.page import export_page
    from freshrec.ops.rules import prometheus_rules
    from freshrec.ops.server import DashboardServer

    cfg = config(args)
    title = args.title or f"freshrec: {Path(args.config).name if args.config else 'model'}"
    data = collector(args, cfg)
    files_only = bool(args.export or args.grafana or args.rules)
    if args.grafana:
        Path(args.grafana).write_text(grafana_dashboard(cfg, title=title))
        print(f"grafana dashboard: {args.grafana}")
    if args.rules:
        Path(args.rules).write_text(prometheus_rules(cfg))
        print(f"prometheus rules: {args.rules}")
    if args.export:
        data.scrape()
        index = export_page(cfg, data.collect(), args.export, title=title)
        print(f"dashboard page: {index}")
    if files_only:
        return 0
    server = DashboardServer(cfg, data, host=args.host, port=args.port,
                             interval_s=args.interval, title=title)
    server.start()
    print(f"dashboard: {server.url}", flush=True)
    try:
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        server.close()
    return 0
