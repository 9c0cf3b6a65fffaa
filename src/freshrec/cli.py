"""``freshrec <command>``: the command-line entry point.

The CLI only parses arguments and hands them to the library; each command lives in a module
of :mod:`freshrec._cli` exposing ``add_arguments(parser)`` and ``run(args) -> int``.

Examples
--------
>>> main(["--version"])  # doctest: +ELLIPSIS
freshrec ...
0
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from freshrec import __version__
from freshrec.errors import FreshrecError, MissingExtraError

__all__ = ["main", "COMMANDS", "EXTRAS"]

COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("freshrec._cli.bench", "run a benchmark and print its JSON result"),
    "simulate": ("freshrec._cli.simulate", "write a simulated click stream to a log"),
    "join": ("freshrec._cli.join", "join impressions and actions into training examples"),
    "train": ("freshrec._cli.train", "train a model on a data set (batch, one pass or epochs)"),
    "evaluate": ("freshrec._cli.evaluate", "evaluate a checkpoint on a data set"),
    "analyze": ("freshrec._cli.analyze", "feature importance and selection by cost of a checkpoint"),
    "serve": ("freshrec._cli.serve", "serve the newest registry model over HTTP"),
    "registry": ("freshrec._cli.registry", "list, verify, repair, roll back or clean a registry"),
    "demo": ("freshrec._cli.demo", "run the whole loop (serve, join, online train) for a while"),
    "dashboard": ("freshrec._cli.dashboard", "serve or export the operations dashboard of a config"),
    "watch": ("freshrec._cli.watch", "evaluate the alert rules of a config and send the alerts"),
    "report": ("freshrec._cli.report", "write the operations report of a period (HTML, Markdown)"),
    "init": ("freshrec._cli.init", "write a starter config for a CSV/Parquet/JSON-lines file"),
}


#: third-party module -> the extra that installs it (``pip install 'freshrec[extra]'``)
EXTRAS: dict[str, str] = {
    "starlette": "serve", "uvicorn": "serve", "httpx": "serve", "httptools": "serve",
    "uvloop": "serve", "onnxruntime": "serve", "onnx": "serve", "redis": "redis",
    "confluent_kafka": "kafka", "matplotlib": "experiments", "plotly": "ops",
    "grafana_foundation_sdk": "ops",
}


def _load(command: str) -> ModuleType:
    """Import the module of ``command`` only; a missing optional extra is one clear line."""
    try:
        return importlib.import_module(COMMANDS[command][0])
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top in EXTRAS:
            raise MissingExtraError(
                f"freshrec {command}: needs {top!r}, which the optional extra "
                f"{EXTRAS[top]!r} installs: pip install 'freshrec[{EXTRAS[top]}]'") from e
        raise


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first token that is one), or None."""
    return next((a for a in argv if a in COMMANDS), None)


def _parser(command: str | None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (to add its arguments)."""
    p = argparse.ArgumentParser(prog="freshrec", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            _load(name).add_arguments(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _parser(_command_of(argv))
    except MissingExtraError as e:
        print(e, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.version:
        print(f"freshrec {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return int(_load(args.command).run(args) or 0)
    except FreshrecError as e:
        print(f"freshrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"freshrec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
