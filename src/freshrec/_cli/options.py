"""The config options every command shares: ``--config FILE``, ``--set KEY=VALUE`` and the
shorthand flags.

Every setting of a command is a key of the config document (:mod:`freshrec.config`); a flag
such as ``freshrec join --window-s 5`` is a shorthand for ``--set join.window_s=5``. Flags
and ``--set`` apply after the file, in the order given (the last one wins). A flag has no
default of its own: ``--help`` shows the key it sets and the default of that key's field.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser(prog="freshrec join")
>>> add_config_arguments(p, [Shorthand("--window-s", "join.window_s", "label window", int),
...                          Shorthand("--flush", "join.flush", "flush at the end", value=True)])
>>> args = p.parse_args(["--set", "join.window_s=30", "--window-s", "5", "--flush"])
>>> args.overrides
[('join.window_s', 30), ('join.window_s', 5), ('join.flush', True)]
>>> section(args, "join").window_s
5
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from freshrec.config import (
    SECTIONS,
    FreshrecConfig,
    config_from_dict,
    read_document,
    section_from_dict,
)

__all__ = ["Shorthand", "DATA_SHORTHANDS", "add_config_arguments", "document", "config", "section",
           "where"]

_SWITCH = object()


@dataclass(frozen=True)
class Shorthand:
    """A flag that sets one key of the config document.

    Parameters
    ----------
    flag : str
        The option, e.g. ``--window-s``.
    key : str
        The dotted key it sets, e.g. ``join.window_s``.
    help : str
        What the key means (the key and its default are appended).
    type : callable
        Converts the flag's argument (``int``, ``float``, ``str`` or any ``str -> value``).
    value : object, optional
        A switch: the flag takes no argument and sets this value (``--no-progress`` sets
        ``join.progress`` to ``False``).
    choices : sequence, optional
        The values the flag accepts.
    """

    flag: str
    key: str
    help: str
    type: Callable[[str], Any] = str
    value: Any = _SWITCH
    choices: Sequence[Any] | None = None

    @property
    def is_switch(self) -> bool:
        return self.value is not _SWITCH


class _Set(argparse.Action):
    """Appends ``(key, value)`` to ``namespace.overrides`` (``--set`` and every shorthand)."""

    def __init__(self, option_strings: list[str], dest: str, key: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.key = key

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if self.key is not None:
            item = (self.key, self.const if self.nargs == 0 else values)
        else:
            key, sep, text = str(values).partition("=")
            if not sep or not key:
                raise argparse.ArgumentError(self, f"expected KEY.PATH=VALUE, got {values!r}")
            try:
                item = (key, yaml.safe_load(text))
            except yaml.YAMLError as e:
                raise argparse.ArgumentError(self, f"{values!r}: not a YAML value ({e})") from e
        # a copy: argparse hands every parse the same default list
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), item])


#: ``freshrec train`` and ``evaluate``: the data set (the ``data`` section).
DATA_SHORTHANDS = [
    Shorthand("--data", "data.path", "data path"),
    Shorthand("--format", "data.format", "reader: criteo, movielens, obd, csv, tsv, jsonl, "
              "parquet, arrow, table (any of the last five by suffix)"),
]


def _lookup(doc: Any, key: str) -> tuple[bool, Any]:
    """``(True, value)`` when the document sets the dotted ``key``, else ``(False, None)``."""
    for part in key.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return False, None
        doc = doc[part]
    return True, doc


def _default(key: str) -> Any:
    """The default of the field a dotted document key names (``join.window_s`` -> 600)."""
    name, *path = key.split(".")
    cls: Any = SECTIONS[name]
    default: Any = None
    for part in path:
        f = next(f for f in dataclasses.fields(cls) if f.name == part)
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        hint = typing.get_type_hints(cls)[part]
        options = typing.get_args(hint) or (hint,)
        cls = next((t for t in options if dataclasses.is_dataclass(t)), None)
    return default


def _show(value: Any) -> str:
    """A default as YAML writes it (``true``, ``null``, ``.inf``, ``[click]``)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _key_help(s: Shorthand, doc: dict[str, Any], source: str) -> str:
    """What a flag's help says of its key: the value a switch sets, or the key and its
    default (the value in the default document ``source`` when that sets it)."""
    if s.is_switch:
        return f"sets {s.key}={_show(s.value)}"
    in_doc, value = _lookup(doc, s.key)
    if in_doc:
        return f"{s.key}, {source}: {_show(value)}"
    default = _default(s.key)
    return s.key if default == "" else f"{s.key}, default {_show(default)}"


def add_config_arguments(p: argparse.ArgumentParser, shorthands: Sequence[Shorthand], *,
                         config_default: str | None = None, config_help: str | None = None
                         ) -> None:
    """Add ``--config``, ``--set`` and the shorthand flags to a command's parser."""
    p.set_defaults(overrides=[])
    doc = read_document(config_default) if config_default else {}
    p.add_argument("--config", metavar="YAML", default=config_default,
                   help=config_help or "the config document (see configs/); flags and --set "
                                       "override its keys" + (f" (default {config_default})"
                                                              if config_default else ""))
    p.add_argument("--set", action=_Set, metavar="KEY=VALUE", dest="overrides",
                   help="set a key of the config document, e.g. join.window_s=30 (repeatable)")
    source = Path(config_default).name if config_default else ""
    for s in shorthands:
        kwargs: dict[str, Any] = {"nargs": 0, "const": s.value} if s.is_switch else {
            "type": s.type, "choices": s.choices, "metavar": s.key.rsplit(".", 1)[-1].upper()}
        p.add_argument(s.flag, action=_Set, key=s.key, dest="overrides",
                       help=f"{s.help} ({_key_help(s, doc, source)})".replace("%", "%%"),
                       **kwargs)


def where(args: argparse.Namespace) -> str:
    """What config errors name: the file, or the command line when there is none."""
    return str(args.config) if args.config else "the command line"


def document(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed config document with the command line's overrides applied."""
    return read_document(args.config, args.overrides)


def config(args: argparse.Namespace) -> FreshrecConfig:
    """The whole validated config (its ``features`` section is required)."""
    return config_from_dict(document(args), where=where(args))


def section(args: argparse.Namespace, name: str) -> Any:
    """The validated section ``name`` (every section present is validated)."""
    return section_from_dict(name, document(args), where=where(args))
