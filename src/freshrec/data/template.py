"""A starter config for a tabular file: column roles guessed from a sample of its rows.

:func:`starter_config` reads the first rows of a CSV, TSV, JSON-lines, Parquet or Arrow file
(any path :class:`~freshrec.data.tabular.TabularReader` takes) and writes a whole config
document: the ``data`` section with the column roles, ``features`` (a user table, an item
table and an attribute table; a slot per id, categorical or list column; a dense feature
per numeric column, normalised with the sample's mean and deviation; the derived history),
``model`` and ``train``. Every role that was guessed rather than given is marked with a
``# guess`` comment saying why, so the user knows what to check. ``freshrec init`` prints
or writes it.

Examples
--------
>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "ratings.csv")
>>> with open(p, "w") as fh:
...     _ = fh.write("userId,movieId,rating,timestamp\\n1,10,4.0,964982703\\n2,11,3.0,964982224\\n")
>>> text = starter_config(p)
>>> print(text.split("features:")[0])  # doctest: +ELLIPSIS
# freshrec config for ...ratings.csv, written by freshrec init from its first 2 rows.
...
data:
  format: csv
  path: ...
  options:
    label_column: "rating >= 4"  # guess: a rating column (1-5 scale); positives are 4 and up
    time_column: "timestamp"  # guess: its name; numbers in s
    time_unit: "s"
    columns:
      userId: id  # guess: a user id (by its name)
      movieId: id  # guess: an item id (by its name)
    history: {user: "userId", item: "movieId", length: 20, name: "hist_items"}  # guess: ...
<BLANKLINE>
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from freshrec.data.config import ROW_ORDER, LabelRule
from freshrec.data.tabular import TabularReader, file_format_of
from freshrec.errors import ConfigError, InputError

__all__ = ["starter_config", "ColumnGuess"]

_USER = re.compile(r"^(user|customer|member|account|visitor|uid)(_?id)?$", re.I)
_ITEM = re.compile(r"^(item|movie|product|ad|video|song|track|article|book|sku|offer|"
                   r"doc|news|iid)(_?id)?$", re.I)
_TIME = re.compile(r"^(timestamp|time|ts|event_time|datetime|date|created_at|.*_(time|ts|at))$",
                   re.I)
_LABEL = re.compile(r"^(label|click|clicked|is_click|y|target|converted|conversion|"
                    r"purchase|purchased|like|liked)$", re.I)
_RATING = re.compile(r"^(rating|ratings|score|stars|grade)$", re.I)
_ID = re.compile(r"(^id$|_id$|Id$|ID$)")
_SEPARATORS = ("|", ";")


@dataclass
class ColumnGuess:
    """What a sample of one column looks like."""

    name: str
    numbers: np.ndarray | None  # float64 of the non-null values when all parse
    values: list[str]           # the non-null values as text
    distinct: int
    sep: str | None = None      # a list separator most values hold
    notes: list[str] = field(default_factory=list)

    @property
    def integral(self) -> bool:
        return self.numbers is not None and bool(np.all(np.floor(self.numbers) == self.numbers))


def _guess_column(name: str, col: pa.Array) -> ColumnGuess:
    values = [v if isinstance(v, str) else json.dumps(v) if isinstance(v, list) else str(v)
              for v in col.to_pylist() if v is not None and v != ""]
    numbers: np.ndarray | None
    try:
        numbers = np.array([float(v) for v in values], np.float64)
        if not np.all(np.isfinite(numbers)):
            numbers = None
    except ValueError:
        numbers = None
    sep = None
    if numbers is None and values:
        for s in _SEPARATORS:
            if sum(s in v for v in values) >= max(1, len(values) // 20):
                sep = s
                break
    if pa.types.is_list(col.type):
        sep = "|"
    return ColumnGuess(name=name, numbers=numbers, values=values, distinct=len(set(values)),
                       sep=sep)


def _dtype(g: ColumnGuess) -> str:
    """``", dtype: string"`` for a slot whose values (a list's items) are not all numbers
    (what the serving metadata then advertises: BYTES), else nothing (int64 ids)."""
    if g.sep is None and g.numbers is not None:
        return ""
    try:
        for v in g.values:
            items = (v.split(g.sep) if g.sep is not None and not v.startswith("[") else
                     [str(x) for x in json.loads(v)] if g.sep is not None else [v])
            for x in items:
                float(x)
    except (ValueError, TypeError):  # not a number (or not a JSON list)
        return ", dtype: string"
    return ""


def _y(value: object) -> str:
    """A YAML scalar (JSON is YAML)."""
    return json.dumps(value)


def _time_guess(g: ColumnGuess, given: bool) -> tuple[list[str], str]:
    """The time options' lines and the note for column ``g``."""
    why = "given" if given else "guess: its name"
    if g.numbers is not None and len(g.numbers):
        mid = float(np.median(np.abs(g.numbers)))
        unit = "ns" if mid > 1e17 else "us" if mid > 1e14 else "ms" if mid > 1e11 else "s"
        return ([f"time_column: {_y(g.name)}  # {why}; numbers in {unit}"
                 if not given else f"time_column: {_y(g.name)}  # numbers in {unit} (guess)",
                 f"time_unit: {_y(unit)}"], unit)
    return ([f"time_column: {_y(g.name)}  # {why}; text times, parsed as ISO-8601 "
             "(else set time_format, e.g. '%d/%m/%Y %H:%M')"], "iso")


def _label_guess(guesses: dict[str, ColumnGuess], label: str | None
                 ) -> tuple[LabelRule, str]:
    if label is not None:
        rule = LabelRule.parse(label, where="--label")
        if rule.column not in guesses:
            raise InputError(f"--label {label!r}: no column {rule.column!r} "
                             f"(columns: {', '.join(guesses)})")
        return rule, f"label_column: {_y(label)}"
    for g in guesses.values():
        if _LABEL.match(g.name) and g.numbers is not None and \
                set(np.unique(g.numbers)) <= {0.0, 1.0}:
            return (LabelRule(column=g.name),
                    f"label_column: {_y(g.name)}  # guess: a 0/1 column named like a click")
    for g in guesses.values():
        if _RATING.match(g.name) and g.numbers is not None and len(g.numbers):
            lo, hi = float(g.numbers.min()), float(g.numbers.max())
            if lo >= 0 and hi <= 5:
                return (LabelRule(column=g.name, op=">=", threshold=4.0),
                        f"label_column: {_y(f'{g.name} >= 4')}  # guess: a rating column "
                        "(1-5 scale); positives are 4 and up")
            q = float(np.median(g.numbers))
            return (LabelRule(column=g.name, op=">", threshold=q),
                    f"label_column: {_y(f'{g.name} > {q:g}')}  # guess: a score column; "
                    "positives are above its median in the sample")
    raise ConfigError("freshrec init: cannot guess the label column: pass --label, a 0/1 "
                      "column (--label click) or a rule (--label 'rating >= 4'); columns: "
                      + ", ".join(guesses))


def starter_config(path: str | os.PathLike[str], *, label: str | None = None,
                   time: str | None = None, sample_rows: int = 20_000) -> str:
    """A commented config document (YAML text) for the tabular data at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        A file, directory or glob that :class:`~freshrec.data.tabular.TabularReader` reads.
    label : str, optional
        The label rule (``"rating >= 4"``) or click column; guessed when None.
    time : str, optional
        The event-time column (or ``row_order``); guessed by name when None.
    sample_rows : int
        Rows read to guess the roles.

    Raises
    ------
    ConfigError
        The label cannot be guessed (pass ``label``) or is not a valid rule.
    InputError
        A named column is not in the data.
    """
    reader = TabularReader(path, chunk_rows=sample_rows, time_column=ROW_ORDER)
    sample = next(iter(reader), None)
    if sample is None:
        raise InputError(f"freshrec init: {str(path)!r} has no readable row "
                         f"({reader.report.bad_lines} bad lines)")
    names = [n for n in sample.schema.names if n != "event_time"]
    guesses = {n: _guess_column(n, sample.column(n)) for n in names}
    rule, label_line = _label_guess(guesses, label)
    options = [label_line]
    time_col = time
    if time_col is None:
        time_col = next((n for n in names if _TIME.match(n) and n != rule.column), None)
    if time_col == ROW_ORDER or time_col is None:
        options.append(f"time_column: {ROW_ORDER}  # "
                       + ("given" if time else "guess: no column named like a time; rows "
                          "train in file order (set time_column if the data has a time)"))
        time_col = None
    elif time_col not in guesses:
        raise InputError(f"--time {time!r}: no column {time_col!r} (columns: {', '.join(names)})")
    else:
        lines, _ = _time_guess(guesses[time_col], given=time is not None)
        options += lines
    roles: list[str] = []
    slots: list[str] = []
    dense: list[str] = []
    user = item = None
    for n, g in guesses.items():
        if n in (rule.column, time_col):
            continue
        if _USER.match(n):
            user = user or n
            roles.append(f"{n}: id  # guess: a user id (by its name)")
            slots.append(f"{n}: {{table: user{_dtype(g)}}}")
        elif _ITEM.match(n):
            item = item or n
            roles.append(f"{n}: id  # guess: an item id (by its name)")
            slots.append(f"{n}: {{table: item{_dtype(g)}}}")
        elif g.sep is not None:
            roles.append(f"{n}: {{list: {_y(g.sep)}}}  # guess: values hold {g.sep!r}")
            slots.append(f"{n}: {{table: attr, kind: multi, max_len: 10, pooling: mean"
                         f"{_dtype(g)}}}")
        elif g.numbers is not None and not (g.integral and (_ID.search(n) or g.distinct <= 20)):
            x = g.numbers
            mean, std = (float(x.mean()), float(x.std())) if len(x) else (0.0, 1.0)
            skewed = len(x) and x.min() >= 0 and x.max() > 50 * (np.median(x) + 1)
            roles.append(f"{n}: dense  # guess: numbers")
            norm = "{norm: log}" if skewed else (
                f"{{norm: standard, mean: {mean:.6g}, std: {std if std > 0 else 1.0:.6g}, "
                f"fill: {mean:.6g}}}")
            dense.append(f"{n}: {norm}  # from the sample" + (" (skewed: log)" if skewed else ""))
        else:
            kind = "id" if _ID.search(n) else "categorical"
            roles.append(f"{n}: {kind}  # guess: {g.distinct} distinct values in the sample")
            slots.append(f"{n}: {{table: attr{_dtype(g)}}}")
    history = ""
    if user is not None and item is not None:
        history = (f"history: {{user: {_y(user)}, item: {_y(item)}, length: 20, "
                   f"name: \"hist_items\"}}  # guess: the user's last 20 items before each row")
        slots.append(f"hist_items: {{table: item, kind: multi, max_len: 20, pooling: mean, "
                     f"id_space: {item}}}")
    tables = [t for t, used in (("user", user), ("item", item), ("attr", True)) if used]
    fmt = file_format_of(Path(str(path))) if not Path(path).is_dir() else None
    out = [f"# freshrec config for {path}, written by freshrec init from its first "
           f"{sample.num_rows} rows.",
           "# Lines marked 'guess' are guesses from the column names and values: check them.",
           "#   freshrec train --config THIS_FILE   (or --data OTHER_FILE with the same columns)",
           "data:", f"  format: {fmt or 'table'}", f"  path: {_y(str(path))}", "  options:"]
    out += [f"    {line}" for line in options]
    if roles:
        out.append("    columns:")
        out += [f"      {r}" for r in roles]
    if history:
        out.append(f"    {history}")
    out += ["features:", "  tables:"]
    out += [f"    {t}: {{dim: 16, optimizer: {{kind: adagrad, lr: 0.05}}, "
            f"initializer: {{kind: normal, std: 0.01}}}}" for t in tables]
    out += ["  slots:"] + [f"    {s}" for s in slots]
    if dense:
        out += ["  dense:"] + [f"    {d}" for d in dense]
    out += ["  labels: [label]",
            "model:", "  kind: deepfm", "  mlp: [64, 32]",
            "train:", "  batch_size: 256", "  dense_optimizer: adam", "  dense_lr: 0.001",
            "  epochs: 1", ""]
    return "\n".join(out)
