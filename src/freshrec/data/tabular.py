"""The generic tabular reader: CSV, TSV, JSON lines, Parquet or Arrow files, with column roles.

:class:`TabularReader` reads one file, a directory of files or a glob (``logs/day-*.csv``) of
one format, and emits the raw columns plus the standard ones the config asks for: ``label``
(float32, by the rule of ``label_column``), ``event_time`` (int64 seconds), ``weight`` and a
derived history column. The column roles are the ``data.options`` of the config document
(:mod:`freshrec.data.config`). Ids and categorical values stay raw: the feature layer
(:class:`~freshrec.features.FeatureSchema`) hashes them, as for every other reader.

Time order is checked. When the files total at most ``max_sort_bytes`` they are read whole
and stably sorted by event time (rows of equal time keep their file order); larger data must
already be in time order, and the first row out of order is an error saying how to sort it.
The history of a row holds only items of rows with an earlier event time, so a model never
sees the row's own item, nor one of the same second, in its history.

A value that cannot be read (a rating that is not a number, a time in another format, a
line with too many fields, a JSON line that is not an object) is counted in the
:class:`~freshrec.data.base.ReadReport` with its file, line (for Parquet/Arrow: the 1-based
row) and column, and its row is skipped; the run goes on.

Examples
--------
>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "ratings.csv")
>>> with open(p, "w") as fh:
...     _ = fh.write("user,movie,rating,ts,genres\\n"
...                  "u1,m1,5,300,Drama|War\\n"
...                  "u1,m2,2,100,Comedy\\n"
...                  "u2,m1,x,200,\\n"
...                  "u1,m3,4,200,\\n")
>>> r = TabularReader(p, label_column="rating >= 4", time_column="ts",
...                   columns={"genres": {"list": "|"}},
...                   history={"user": "user", "item": "movie", "length": 2})
>>> t = next(iter(r))
>>> t.column("movie").to_pylist(), t.column("label").to_pylist()
(['m2', 'm3', 'm1'], [0.0, 1.0, 1.0])
>>> t.column("hist_items").to_pylist(), t.column("genres").to_pylist()
([[], ['m2'], ['m2', 'm3']], [['Comedy'], None, ['Drama', 'War']])
>>> print(r.report.examples[0])  # doctest: +ELLIPSIS
/...ratings.csv:4: field rating: 'x' is not a number (label rule rating >= 4)
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from freshrec.data._parse import Converter, Kind, columns_to_arrays, open_text
from freshrec.data.base import DEFAULT_CHUNK_ROWS, DataNotFoundError, Reader, ReadReport
from freshrec.data.config import (
    ROW_ORDER,
    TIME_UNITS,
    WHERE,
    ColumnRole,
    HistoryConfig,
    LabelRule,
    TabularConfig,
    tabular_config_from_options,
)
from freshrec.errors import ConfigError, InputError

__all__ = ["TabularReader", "HistoryBuilder", "TABULAR_FORMATS", "file_format_of"]

log = logging.getLogger(__name__)

#: File formats of the tabular reader, and the suffixes that name them.
TABULAR_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
                   ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                   ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}

_DELIMITERS = {"csv": ",", "tsv": "\t"}


def file_format_of(path: Path) -> str | None:
    """The tabular format a file's suffix names (``.gz`` ignored), or None."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return TABULAR_FORMATS.get(suffixes[-1]) if suffixes else None


# --- column conversions (each raises ValueError on a bad value; see _parse.Converter) -------


def _strings(values: pa.Array) -> pa.Array:
    """``values`` as strings with ``""`` as null."""
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _numbers(values: pa.Array) -> pa.Array:
    """float64 of a numeric or text column (nulls kept); ValueError on text or non-finite."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.cast(_strings(values), pa.float64())
    elif pa.types.is_boolean(values.type) or pa.types.is_integer(values.type) or \
            pa.types.is_floating(values.type) or pa.types.is_decimal(values.type):
        values = pc.cast(values, pa.float64())
    else:
        raise ValueError(f"a {values.type} column")
    if pc.any(pc.invert(pc.is_finite(values))).as_py():
        raise ValueError("not finite")
    return values


@dataclass
class _Passthrough:
    """An id, categorical or undeclared column: text ``""`` becomes null, nothing fails."""

    expected: str = "a value"

    def __call__(self, values: pa.Array) -> pa.Array:
        if pa.types.is_string(values.type):
            return _strings(values)
        return values


@dataclass
class _Dense:
    """A finite number or missing (null); ``required``: missing is bad too."""

    expected: str = "a finite number"
    required: bool = False
    non_negative: bool = False

    def __call__(self, values: pa.Array) -> pa.Array:
        out = _numbers(values)
        if self.required and out.null_count:
            raise ValueError("missing value")
        if self.non_negative and pc.any(pc.less(out, 0)).as_py():
            raise ValueError("negative")
        return pc.cast(out, pa.float32())


@dataclass
class _List:
    """A list column: text split on ``sep`` (empty text: null); a list column as it is."""

    sep: str
    expected: str = "a list"

    def __call__(self, values: pa.Array) -> pa.Array:
        if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            return values
        return pc.split_pattern(_strings(values), self.sep)


def _integral_text(text: pa.Array) -> pa.Array:
    """``5.0`` (and ``5.``, ``5.00``) as ``5``, so label-map keys and values match as numbers.

    >>> _integral_text(pa.array(["5.0", "5", "-1.00", "5.5", "a.0"])).to_pylist()
    ['5', '5', '-1', '5.5', 'a.0']
    """
    return pc.replace_substring_regex(text, r"^([+-]?\d+)\.0*$", r"\1")


class _Label:
    """``label`` by a :class:`LabelRule`: a click column in [0, 1], a mapping or a threshold."""

    def __init__(self, rule: LabelRule) -> None:
        self.rule = rule
        if rule.mapping is not None:
            self.expected = f"one of {sorted(rule.mapping)} (data.options.label_map)"
            self._keys = _integral_text(pa.array(list(rule.mapping), pa.string()))
            self._labels = pa.array(list(rule.mapping.values()), pa.float32())
        elif rule.op:
            self.expected = f"a number (label rule {rule})"
        else:
            self.expected = (f"a label in [0, 1] (a click column; for ratings set "
                             f"{WHERE}.label_column to a rule such as '{rule.column} >= 4')")

    def __call__(self, values: pa.Array) -> pa.Array:
        if self.rule.mapping is not None:
            pos = pc.index_in(_integral_text(_strings(values)), value_set=self._keys)
            if pos.null_count:
                raise ValueError("not in label_map")
            return self._labels.take(pos)
        x = _numbers(values)
        if x.null_count:
            raise ValueError("missing value")
        if not self.rule.op:
            if pc.any(pc.or_(pc.less(x, 0), pc.greater(x, 1))).as_py():
                raise ValueError("not in [0, 1]")
            return pc.cast(x, pa.float32())
        op = {">=": pc.greater_equal, ">": pc.greater, "<=": pc.less_equal, "<": pc.less,
              "==": pc.equal, "!=": pc.not_equal}[self.rule.op]
        return pc.cast(op(x, self.rule.threshold), pa.float32())


_ZONE = r"(Z|z|[+-]\d\d(:?\d\d)?)$"


class _Time:
    """``event_time`` in int64 seconds from a timestamp, date, number (in ``unit``) or text
    column (``fmt``: ``iso``, a strptime format, or empty: numbers, else ISO-8601)."""

    def __init__(self, fmt: str, unit: str) -> None:
        self.fmt, self.unit = fmt, unit
        self._mode = fmt or None  # "" is decided on the first text value seen
        what = {"": f"a time (a number of {unit} or ISO-8601)", "iso": "an ISO-8601 time"}
        self.expected = what.get(fmt, f"a time in the format {fmt!r}")

    def __call__(self, values: pa.Array) -> pa.Array:
        t = values.type
        if pa.types.is_timestamp(t):
            secs = pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False) \
                if not values.null_count else None
            if secs is None:
                raise ValueError("missing value")
            return pa.array(np.floor_divide(secs, TIME_UNITS[t.unit]), pa.int64())
        if pa.types.is_date(t):
            return self(pc.cast(values, pa.timestamp("s")))
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            return self._from_numbers(_numbers(values))
        text = _strings(values)
        if text.null_count:
            raise ValueError("missing value")
        if self._mode is None and len(text):
            first = text[0].as_py()
            try:
                float(first)
                self._mode = "number"
            except ValueError:
                self._mode = "iso"
        if self._mode == "number":
            return self._from_numbers(_numbers(text))
        if self._mode == "iso":
            return self._from_iso(text)
        stamps = pc.strptime(text, format=self._mode, unit="s", error_is_null=False)
        return pc.cast(stamps, pa.int64())

    def _from_numbers(self, x: pa.Array) -> pa.Array:
        if x.null_count:
            raise ValueError("missing value")
        arr = np.floor(x.to_numpy(zero_copy_only=False) / TIME_UNITS[self.unit])
        if np.abs(arr).max(initial=0) >= 2.0**62:
            raise ValueError("out of range")
        return pa.array(arr.astype(np.int64), pa.int64())

    @staticmethod
    def _from_iso(text: pa.Array) -> pa.Array:
        # each value alone decides how it parses, so a chunk fails exactly where a value does
        zoned = np.asarray(pc.match_substring_regex(text, _ZONE).to_numpy(zero_copy_only=False),
                           dtype=bool)
        out = np.empty(len(text), np.int64)
        for mask, typ in ((zoned, pa.timestamp("us", tz="UTC")), (~zoned, pa.timestamp("us"))):
            if mask.any():
                us = pc.cast(pc.cast(text.filter(pa.array(mask)), typ), pa.int64())
                out[mask] = np.floor_divide(us.to_numpy(zero_copy_only=False), 1_000_000)
        return pa.array(out, pa.int64())


def _float_or_nan(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# --- derived history -------------------------------------------------------------------------


class HistoryBuilder:
    """Per row, the last ``length`` items its user interacted with at an earlier event time.

    Rows must come in time order (one call or several, in order). Items of rows with the
    same event time as the row are never in its history (they are not known before it).

    Parameters
    ----------
    length : int
        Items kept per user (the most recent).

    Examples
    --------
    >>> h = HistoryBuilder(length=2)
    >>> h.extend(pa.array(["a", "a", "b", "a", "a"]), pa.array([1, 2, 3, 4, 5]),
    ...          np.array([10, 10, 11, 12, 13]), None).to_pylist()
    [[], [], [], [1, 2], [2, 4]]
    """

    def __init__(self, *, length: int) -> None:
        self.length = length
        # user -> [recent items (deque), items at the pending time (list), pending time]
        self._users: dict[Any, list[Any]] = {}

    def extend(self, users: pa.Array, items: pa.Array, times: np.ndarray,
               positive: np.ndarray | None) -> pa.ListArray:
        """Histories of these rows (then remember their items); ``positive``: which rows are
        interactions (None: every row)."""
        offsets = np.zeros(len(users) + 1, np.int32)
        values: list[Any] = []
        us, its = users.to_pylist(), items.to_pylist()
        pos = [True] * len(us) if positive is None else positive.tolist()
        for k, (u, i, t, p) in enumerate(zip(us, its, times.tolist(), pos, strict=True)):
            state = self._users.get(u) if u is not None else None
            if state is not None:
                if state[1] and state[2] < t:
                    state[0].extend(state[1])
                    state[1] = []
                values.extend(state[0])
            offsets[k + 1] = len(values)
            if u is None or i is None or not p:
                continue
            if state is None:
                state = self._users[u] = [deque(maxlen=self.length), [], t]
            if not state[1]:
                state[2] = t
            state[1].append(i)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, items.type))


# --- raw chunks of each file format ----------------------------------------------------------


@dataclass
class _Chunk:
    """Raw columns of up to ``chunk_rows`` rows and their 1-based lines (rows)."""

    columns: dict[str, pa.Array]
    lines: list[int]


def _check_header(names: Sequence[str], path: Path) -> None:
    seen: set[str] = set()
    for j, n in enumerate(names):
        if not n:
            raise InputError(f"{path}:1: column {j + 1} of the header has no name")
        if n in seen:
            raise InputError(f"{path}:1: column {n!r} appears twice in the header")
        seen.add(n)


def _text_chunks(path: Path, delimiter: str, chunk_rows: int, report: ReadReport
                 ) -> Iterator[_Chunk]:
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: the file is empty (expected a header line naming "
                             "the columns)") from None
        except csv.Error as e:
            raise InputError(f"{path}:1: cannot read the header ({e})") from e
        _check_header(header, path)
        width = len(header)
        rows: list[list[str]] = []
        lines: list[int] = []
        last = reader.line_num
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                report.add_bad(last + 1, f"not valid CSV ({e})")
                last = reader.line_num
                continue
            start, last = last + 1, reader.line_num
            if not fields:
                report.add_bad(start, "empty line")
            elif len(fields) != width:
                report.add_bad(start, f"expected {width} fields, got {len(fields)}")
            else:
                rows.append(fields)
                lines.append(start)
                if len(rows) >= chunk_rows:
                    yield _columns_of(header, rows, lines)
                    rows, lines = [], []
        if rows:
            yield _columns_of(header, rows, lines)


def _columns_of(header: Sequence[str], rows: list[list[str]], lines: list[int]) -> _Chunk:
    cols = zip(*rows, strict=True)
    return _Chunk({n: pa.array(c, pa.string()) for n, c in zip(header, cols, strict=True)},
                  lines)


def _json_text(v: Any, sep: str) -> str:
    """A JSON value as the reader's text. JSON has one number type, so a float that is an
    integer is written as the integer: ``5.0`` is the id ``5``, not another id.

    >>> [_json_text(v, "|") for v in (5.0, 5, -2.0, 5.5, [1.0, 2], True, None)]
    ['5', '5', '-2', '5.5', '1|2', '1', '']
    """
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list):
        return sep.join(_json_text(x, sep) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _jsonl_chunks(path: Path, seps: Mapping[str, str], chunk_rows: int, report: ReadReport
                  ) -> Iterator[_Chunk]:
    names: list[str] | None = None
    rows: list[dict[str, Any]] = []
    lines: list[int] = []

    def chunk() -> _Chunk:
        assert names is not None
        return _Chunk({n: pa.array([_json_text(r.get(n), seps.get(n, "|")) for r in rows],
                                   pa.string()) for n in names}, lines)

    with open_text(path) as fh:
        for line_no, text in enumerate(fh, start=1):
            if not text.strip():
                report.add_bad(line_no, "empty line")
                continue
            try:
                obj = json.loads(text)
            except ValueError as e:
                report.add_bad(line_no, f"not valid JSON ({e})")
                continue
            if not isinstance(obj, dict):
                report.add_bad(line_no, f"expected a JSON object, got {type(obj).__name__}")
                continue
            if names is None:
                names = [str(k) for k in obj]
            rows.append(obj)
            lines.append(line_no)
            if len(rows) >= chunk_rows:
                yield chunk()
                rows, lines = [], []
    if rows:
        yield chunk()


def _arrow_chunks(path: Path, fmt: str, chunk_rows: int) -> Iterator[_Chunk]:
    try:
        dataset = ds.dataset(str(path), format="ipc" if fmt == "arrow" else fmt)
        row = 0
        for batch in dataset.to_batches(batch_size=chunk_rows):
            if batch.num_rows:
                yield _Chunk({n: batch.column(n) for n in batch.schema.names},
                             list(range(row + 1, row + batch.num_rows + 1)))
                row += batch.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: cannot read it as {fmt}: {e}") from e


# --- the reader ------------------------------------------------------------------------------


class TabularReader(Reader):
    """Read tabular files with the column roles of ``data.options`` (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        A file, a directory of files of one format, or a glob pattern.
    chunk_rows : int
        Rows per batch.
    max_reported : int
        Bad values remembered and logged individually.
    file_format : {"csv", "tsv", "jsonl", "parquet", "arrow"} or None
        None: from each file's suffix (``.gz`` allowed for text).
    label_column, label_map, time_column, time_format, time_unit, columns, weight_column, \
history, max_sort_bytes, delimiter
        The options of :mod:`freshrec.data.config` (``data.options`` keys).

    Raises
    ------
    DataNotFoundError
        ``path`` does not exist or the glob matches no file.
    ConfigError
        An option is invalid (the error names its ``data.options`` key).
    InputError
        (when read) A file lacks a named column, has no time column while none is declared,
        or holds a label that is not in [0, 1] without a rule, or larger data is out of time
        order.
    """

    _expects_dir = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        max_reported: int = 20,
        file_format: str | None = None,
        label_column: str | None = None,
        label_map: Mapping[Any, Any] | None = None,
        time_column: str | None = None,
        time_format: str | None = None,
        time_unit: str | None = None,
        columns: Mapping[str, Any] | None = None,
        weight_column: str | None = None,
        history: Mapping[str, Any] | None = None,
        max_sort_bytes: int | None = None,
        delimiter: str | None = None,
    ) -> None:
        given = {"file_format": file_format, "label_column": label_column,
                 "label_map": label_map, "time_column": time_column, "time_format": time_format,
                 "time_unit": time_unit, "columns": columns, "weight_column": weight_column,
                 "history": history, "max_sort_bytes": max_sort_bytes, "delimiter": delimiter}
        self.config: TabularConfig = tabular_config_from_options(
            {k: v for k, v in given.items() if v is not None})
        fmt = self.config.file_format
        if fmt and fmt not in _DELIMITERS and fmt not in ("jsonl", "parquet", "arrow"):
            raise ConfigError(f"{WHERE}.file_format: must be one of csv, tsv, jsonl, parquet, "
                              f"arrow, got {fmt!r}")
        self.files: list[Path] = []
        super().__init__(path, chunk_rows=chunk_rows, max_reported=max_reported)

    def _check_path(self) -> None:
        text = str(self.path)
        if glob.has_magic(text):
            self.files = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_file()]
            if not self.files:
                raise DataNotFoundError(f"TabularReader: no file matches {text!r}")
        elif self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir()
                                if p.is_file() and file_format_of(p) is not None)
            if not self.files:
                raise DataNotFoundError(
                    f"TabularReader: directory {text!r} holds no file with a tabular suffix "
                    f"({', '.join(sorted(TABULAR_FORMATS))})")
        elif self.path.is_file():
            self.files = [self.path]
        else:
            raise DataNotFoundError(f"TabularReader: data path {text!r} does not exist")
        formats = {self._format(p) for p in self.files}
        if len(formats) > 1:
            raise InputError(f"TabularReader: {text!r} mixes file formats {sorted(formats)}; "
                             "read one format at a time")

    def _format(self, path: Path) -> str:
        fmt = self.config.file_format or file_format_of(path)
        if fmt is None:
            raise ConfigError(f"{path}: cannot tell the file format from its suffix; set "
                              f"{WHERE}.file_format (csv, tsv, jsonl, parquet or arrow)")
        return fmt

    # -- the plan: which output column comes from which input column, converted how --------

    def _plan(self, names: Sequence[str], path: Path) -> list[tuple[str, str, Kind]]:
        """``(output, input, conversion)`` for every emitted column of a file."""
        cfg = self.config
        have = set(names)
        needed: dict[str, str] = {}
        label = cfg.label or (LabelRule(column="label") if "label" in have else None)
        if label is not None:
            needed[label.column] = f"{WHERE}.label_column"
        time_col = cfg.time_column or ("event_time" if "event_time" in have else "")
        if not time_col:
            raise InputError(
                f"{path}: no time column: set {WHERE}.time_column to the column holding the "
                f"event time (columns: {', '.join(names)}), or to {ROW_ORDER} to use the row "
                "order as time (windows, expiry and history then follow the file order)")
        if time_col != ROW_ORDER:
            needed[time_col] = f"{WHERE}.time_column"
        if cfg.weight_column:
            needed[cfg.weight_column] = f"{WHERE}.weight_column"
        if cfg.history is not None:
            needed[cfg.history.user] = f"{WHERE}.history.user"
            needed[cfg.history.item] = f"{WHERE}.history.item"
        for c in cfg.columns:
            if c.role is not ColumnRole.IGNORE:
                needed[c.name] = f"{WHERE}.columns.{c.name}"
        for col, key in needed.items():
            if col not in have:
                raise InputError(f"{path}: no column {col!r} (named by {key}; columns: "
                                 f"{', '.join(names)})")
        special = {"label", "event_time", "weight"}
        plan: list[tuple[str, str, Kind]] = []
        for n in names:
            spec = cfg.role(n)
            if (spec is not None and spec.role is ColumnRole.IGNORE) or n in special:
                continue
            conv: Converter
            if spec is None or spec.role in (ColumnRole.ID, ColumnRole.CATEGORICAL):
                conv = _Passthrough()
            elif spec.role is ColumnRole.DENSE:
                conv = _Dense()
            else:
                conv = _List(sep=spec.sep, expected=f"a list separated by {spec.sep!r}")
            plan.append((n, n, conv))
        if label is not None:
            plan.append(("label", label.column, _Label(label)))
        if time_col != ROW_ORDER:
            plan.append(("event_time", time_col, _Time(cfg.time_format, cfg.time_unit)))
        if cfg.weight_column:
            plan.append(("weight", cfg.weight_column,
                         _Dense(expected="a weight (a finite number >= 0)", required=True,
                                non_negative=True)))
        return plan

    # -- reading --------------------------------------------------------------------------

    def _raw_chunks(self, path: Path, report: ReadReport) -> Iterator[_Chunk]:
        fmt = self._format(path)
        if fmt in _DELIMITERS:
            return _text_chunks(path, self.config.delimiter or _DELIMITERS[fmt],
                                self.chunk_rows, report)
        if fmt == "jsonl":
            return _jsonl_chunks(path, {c.name: c.sep for c in self.config.columns},
                                 self.chunk_rows, report)
        return _arrow_chunks(path, fmt, self.chunk_rows)

    def _file_batches(self, path: Path, report: ReadReport, first_row: int
                      ) -> Iterator[tuple[pa.RecordBatch, list[int]]]:
        """Converted batches of one file with the lines of their rows."""
        plan: list[tuple[str, str, Kind]] | None = None
        row = first_row
        for chunk in self._raw_chunks(path, report):
            if plan is None:
                plan = self._plan(list(chunk.columns), path)
                self._check_label_scale(plan, chunk, path)
            arrays, keep = columns_to_arrays([chunk.columns[src] for _, src, _ in plan],
                                             [src for _, src, _ in plan],
                                             [conv for _, _, conv in plan], chunk.lines, report)
            kept = np.flatnonzero(keep)
            cols = {out: arr for (out, _, _), arr in zip(plan, arrays, strict=True)}
            if self.config.time_column == ROW_ORDER:
                cols["event_time"] = pa.array(row + kept, pa.int64())
            row += len(chunk.lines)
            if len(kept):
                yield pa.RecordBatch.from_pydict(cols), [chunk.lines[k] for k in kept]

    def _check_label_scale(self, plan: Sequence[tuple[str, str, Kind]], chunk: _Chunk,
                           path: Path) -> None:
        """A label column that is mostly outside [0, 1] is a missing rule, not bad values."""
        for out, src, conv in plan:
            if out != "label" or not isinstance(conv, _Label) or conv.rule.op or \
                    conv.rule.mapping is not None:
                continue
            values = np.array([_float_or_nan(v) for v in chunk.columns[src].to_pylist()])
            out_of_range = (values < 0) | (values > 1)
            if out_of_range.sum() > len(values) // 2:
                first = int(np.flatnonzero(out_of_range)[0])
                raise InputError(
                    f"{path}:{chunk.lines[first]}: label column {src!r} holds "
                    f"{values[first]:g}, not a label in [0, 1]: set {WHERE}.label_column "
                    f"to a rule such as '{src} >= 4', or map its values with "
                    f"{WHERE}.label_map")

    def _batches(self, report: ReadReport) -> Iterator[pa.RecordBatch]:
        cfg = self.config
        history = HistoryBuilder(length=cfg.history.length) if cfg.history else None
        size = sum(p.stat().st_size for p in self.files)
        in_memory = cfg.time_column != ROW_ORDER and size <= cfg.max_sort_bytes
        batches: list[pa.RecordBatch] = []
        last: tuple[int, Path, int] | None = None  # time, file and line of the last row
        first_row = 0
        for path in self.files:
            sub = ReadReport(path=str(path), max_reported=self.max_reported)
            for batch, lines in self._file_batches(path, sub, first_row):
                first_row += batch.num_rows
                if in_memory:
                    batches.append(batch)
                    continue
                last = self._check_order(batch, lines, path, last, size)
                yield self._with_history(batch, history)
            report.merge(sub)
        if not in_memory or not batches:
            return
        table = pa.Table.from_batches(batches).combine_chunks()
        times = table.column("event_time").to_numpy()
        if len(times) > 1 and (np.diff(times) < 0).any():
            log.info("rows not in time order: sorting %d rows by %s in memory", len(times),
                     cfg.time_column or "event_time")
            table = table.take(pa.array(np.argsort(times, kind="stable")))
        for batch in table.to_batches(max_chunksize=self.chunk_rows):
            yield self._with_history(batch, history)

    def _check_order(self, batch: pa.RecordBatch, lines: list[int], path: Path,
                     last: tuple[int, Path, int] | None, size: int) -> tuple[int, Path, int]:
        times = batch.column("event_time").to_numpy()
        if self.config.time_column != ROW_ORDER:
            prev = np.concatenate([[last[0] if last else times[0]], times[:-1]])
            bad = np.flatnonzero(times < prev)
            if len(bad):
                k = int(bad[0])
                col = self.config.time_column or "event_time"
                raise InputError(
                    f"{path}:{lines[k]}: event time {int(times[k])} is before the previous "
                    f"row's {int(prev[k])}: the rows are not in time order, and the data "
                    f"({size:,} bytes) is larger than {WHERE}.max_sort_bytes "
                    f"({self.config.max_sort_bytes:,}) so it is not sorted in memory. Sort it "
                    f"by {col!r} first (a CSV file: keep the header and sort the rest, e.g. "
                    f"sort -t, -k<N>,<N>n with N the column number of {col!r}; Parquet: "
                    "pyarrow.parquet.write_table(table.sort_by(...))), or raise "
                    f"{WHERE}.max_sort_bytes")
        return int(times[-1]), path, lines[-1]

    def _with_history(self, batch: pa.RecordBatch, history: HistoryBuilder | None
                      ) -> pa.RecordBatch:
        h: HistoryConfig | None = self.config.history
        if history is None or h is None:
            return batch
        positive = None
        if h.positives_only:
            if "label" not in batch.schema.names:
                raise ConfigError(f"{WHERE}.history.positives_only: needs a label "
                                  f"({WHERE}.label_column)")
            positive = batch.column("label").to_numpy(zero_copy_only=False) >= 0.5
        hist = history.extend(batch.column(h.user), batch.column(h.item),
                              batch.column("event_time").to_numpy(), positive)
        cols = {n: batch.column(n) for n in batch.schema.names if n != h.name}
        cols[h.name] = hist
        return pa.RecordBatch.from_pydict(cols)
