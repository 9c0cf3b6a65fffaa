"""``freshrec bench <name> [--json] [--quick] [...]``: run ``benchmarks/*/bench_<name>.py``.

Benchmarks live beside the package in the source tree (``benchmarks/<pkg>/bench_<name>.py``;
an install carries a copy in ``<prefix>/share/freshrec/benchmarks``),
each with a ``main(argv) -> dict`` whose result is printed as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from freshrec._resources import shipped_dir
from freshrec.benchinfo import load_script
from freshrec.errors import InputError


def available() -> dict[str, Path]:
    """Benchmark name -> script path."""
    root = shipped_dir("benchmarks")
    return {p.stem[len("bench_"):]: p for p in sorted(root.glob("*/bench_*.py"))}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="benchmark name (e.g. table, train, log, join, sync, serve)")
    p.add_argument("--json", action="store_true", help="print only the JSON result line")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options passed to the benchmark")


def run(args: argparse.Namespace) -> int:
    scripts = available()
    if args.name not in scripts:
        raise InputError(
            f"unknown benchmark {args.name!r}; available: {', '.join(scripts) or 'none'} "
            f"(looked in {shipped_dir('benchmarks')})"
        )
    module = load_script(scripts[args.name], f"bench_{args.name}")
    rest = [a for a in args.args if a != "--json"]
    quiet = args.json or len(rest) != len(args.args)
    result = module.main(rest, verbose=not quiet)
    print(json.dumps(result, sort_keys=True))
    return 0
