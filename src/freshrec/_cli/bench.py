"""``freshrec bench <name> [--json] [--quick] [...]``: run ``benchmarks/*/bench_<name>.py``.

Benchmarks live beside the package in the source tree (``benchmarks/<pkg>/bench_<name>.py``;
an install carries a copy in ``<prefix>/share/freshrec/benchmarks``),
each with a ``main(argv) -> dict`` whose result is printed as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from freshrec.errors import InputError


def benchmarks_root() -> Path:
    """The ``benchmarks/`` folder of the source checkout this package is installed from, or
    the copy an install puts in ``<prefix>/share/freshrec/benchmarks``."""
    checkout = Path(__file__).resolve().parents[3] / "benchmarks"
    installed = Path(sys.prefix) / "share" / "freshrec" / "benchmarks"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


def available() -> dict[str, Path]:
    """Benchmark name -> script path."""
    root = benchmarks_root()
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
            f"(looked in {benchmarks_root()})"
        )
    spec = importlib.util.spec_from_file_location(f"bench_{args.name}", scripts[args.name])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rest = [a for a in args.args if a != "--json"]
    quiet = args.json or len(rest) != len(args.args)
    result = module.main(rest, verbose=not quiet)
    print(json.dumps(result, sort_keys=True))
    return 0
