"""``freshrec init --data FILE [--label EXPR] [--time COLUMN] [--out CONFIG]``.

Writes a starter config for a tabular file (CSV, TSV, JSON lines, Parquet, Arrow): the
column roles guessed from its first rows, each guess marked with a comment
(:func:`freshrec.data.template.starter_config`). Without ``--out`` the document is printed.

    freshrec init --data ratings.csv --label "rating >= 4" --out ratings.yaml
    freshrec train --config ratings.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from freshrec.data.template import starter_config
from freshrec.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="PATH",
                   help="a tabular file, directory or glob (csv, tsv, jsonl, parquet, arrow)")
    p.add_argument("--label", metavar="EXPR",
                   help="the label: a 0/1 column or a rule such as 'rating >= 4' (default: "
                        "guessed)")
    p.add_argument("--time", metavar="COLUMN",
                   help="the event-time column, or row_order (default: guessed by name)")
    p.add_argument("--out", metavar="CONFIG", help="write the config here (default: print it)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--sample-rows", type=int, default=20_000, metavar="N",
                   help="rows read to guess the roles (default 20000)")


def run(args: argparse.Namespace) -> int:
    text = starter_config(args.data, label=args.label, time=args.time,
                          sample_rows=args.sample_rows)
    if not args.out:
        print(text, end="")
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{str(out)!r} exists; pass --force to overwrite it")
    out.write_text(text)
    print(f"wrote {out}; check the lines marked 'guess', then: freshrec train --config {out}")
    return 0
