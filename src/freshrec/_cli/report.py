"""``freshrec report --config CFG --since 24h [--run-dir DIR ...] [--registry DIR] [--out DIR]``.

Writes the operations report of the period (:mod:`freshrec.ops.report`) as JSON, Markdown and
HTML into ``--out`` (default ``reports/``) and prints their paths; importance changes are
against ``--previous`` (default: ``latest.json`` of ``--out``, the last report written there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from freshrec._cli.dashboard import add_source_arguments, sources
from freshrec._cli.options import add_config_arguments, config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, [])
    p.add_argument("--since", default="24h", help="the period: 24h, 90m, 2d, or seconds")
    add_source_arguments(p, metrics=False)
    p.add_argument("--out", default="reports", metavar="DIR", help="where the report goes")
    p.add_argument("--previous", default=None, metavar="JSON",
                   help="the previous report's JSON (default: OUT/latest.json when present)")
    p.add_argument("--title", default="freshrec operations report")


def run(args: argparse.Namespace) -> int:
    from freshrec.ops.report import build_report, parse_since, write_report
    from freshrec.ops.serving import serving_windows

    cfg = config(args)
    prev_path = Path(args.previous) if args.previous else Path(args.out) / "latest.json"
    previous = json.loads(prev_path.read_text()) if prev_path.is_file() else None
    run_dirs, registry = sources(args, cfg)
    report = build_report(cfg, run_dirs=run_dirs, registry=registry,
                          since_s=parse_since(args.since), previous=previous,
                          serving=serving_windows(cfg))
    for kind, path in write_report(report, args.out, title=args.title).items():
        print(f"{kind}: {path}")
    return 0
