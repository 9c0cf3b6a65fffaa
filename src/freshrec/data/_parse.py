"""Text parsing shared by the line-based readers (Criteo, MovieLens, Open Bandit).

:func:`split_chunks` groups the lines of a file into chunks of well-formed lines (counting
the malformed ones in a :class:`~freshrec.data.base.ReadReport`); :func:`batch_from_rows`
splits a chunk with Arrow's CSV parser (no quoting: none of these formats quote) and converts
its columns with Arrow casts. Only when a cast fails are the offending values located (by
bisection), so the fast path stays vectorised.

Examples
--------
>>> from freshrec.data.base import ReadReport
>>> report = ReadReport(path="clicks.txt")
>>> lines = ["1,ab", "0,zz", "1", "0,12"]
>>> [batch_from_rows(rows, line_nos, ["label", "ad"], ["label", "hex"], report, sep=",")
...  .to_pydict() for rows, line_nos, _ in split_chunks(lines, sep=",", width=2,
...                                                       chunk_rows=8, report=report)]
[{'label': [1.0, 0.0], 'ad': ['ab', '12']}]
>>> for bad in report.examples:
...     print(bad)
clicks.txt:3: expected 2 fields, got 1
clicks.txt:2: field ad: 'zz' is not hexadecimal
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from freshrec.data.base import ReadReport
from freshrec.errors import brief

__all__ = ["KINDS", "Converter", "open_text", "split_chunks", "batch_from_rows",
           "columns_to_arrays"]


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file (``.gz`` transparently); undecodable bytes become U+FFFD."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors="replace", newline="")
    return open(path, encoding=encoding, errors="replace", newline="")  # noqa: SIM115


#: A column kind: how the raw text of a field becomes an Arrow value ("" is always null).
#: ``int`` int64 (integral floats such as ``260.0`` accepted), ``float`` float32,
#: ``hex`` string of hex digits, ``str`` any string, ``label`` float32 non-null,
#: ``time`` int64 non-null, ``iso_time`` ISO-8601 date-time with a zone offset, non-null,
#: as int64 seconds since the Unix epoch (fraction dropped).
KINDS = ("int", "float", "hex", "str", "label", "time", "iso_time")

_HEX_RE = "^[0-9a-fA-F]+$"


def _nullify(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _all_true(mask: pa.Array) -> bool:
    return pc.all(mask).as_py() is not False


class Converter(Protocol):
    """A column conversion other than the :data:`KINDS`: called with the raw column (any
    Arrow type), it returns the converted column or raises ``ValueError``/``ArrowInvalid``
    when any value is bad; ``expected`` says what a good value is (for the report)."""

    expected: str

    def __call__(self, values: pa.Array) -> pa.Array: ...


#: A column kind: one of :data:`KINDS` or a :class:`Converter`.
Kind = str | Converter


def _convert_column(values: pa.Array, kind: Kind) -> pa.Array:
    """Convert one string column; raise ``ValueError``/``ArrowInvalid`` if any value is bad."""
    if not isinstance(kind, str):
        return kind(values)
    arr = _nullify(values)
    if kind in ("label", "time", "iso_time") and arr.null_count:
        raise ValueError("missing value")
    if kind == "iso_time":
        ts = pc.cast(pc.cast(arr, pa.timestamp("us", tz="UTC")), pa.int64())
        return pc.divide(ts, 1_000_000)
    if kind == "str":
        return arr
    if kind == "hex":
        if not _all_true(pc.match_substring_regex(arr, _HEX_RE)):
            raise ValueError("not hex")
        return arr
    if kind in ("float", "label"):
        out = pc.cast(arr, pa.float64())
        if not _all_true(pc.is_finite(out)):
            raise ValueError("not finite")
        return pc.cast(out, pa.float32())
    # int / time
    try:
        return pc.cast(arr, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        f = pc.cast(arr, pa.float64())
        if not (_all_true(pc.equal(pc.floor(f), f)) and _all_true(pc.less(pc.abs(f), 2.0**53))):
            raise ValueError("not integral") from None
        return pc.cast(f, pa.int64())


_CONVERT_ERRORS = (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError)

_EXPECTED = {
    "int": "an integer",
    "time": "an integer time",
    "iso_time": "an ISO-8601 time with a zone offset",
    "float": "a finite number",
    "label": "a finite number",
    "hex": "hexadecimal",
    "str": "a string",
}


def _bad_positions(values: pa.Array, kind: Kind, start: int = 0) -> list[int]:
    """Positions of the values that fail :func:`_convert_column`, found by bisection.

    Uses the very conversion of the fast path, so what is reported bad is exactly what would
    have failed; costs O(bad values x log(chunk)) vectorised calls.
    """
    try:
        _convert_column(values, kind)
        return []
    except _CONVERT_ERRORS:
        if len(values) == 1:
            return [start]
    mid = len(values) // 2
    return _bad_positions(values[:mid], kind, start) + _bad_positions(
        values[mid:], kind, start + mid
    )


def columns_to_arrays(
    columns: Sequence[pa.Array],
    names: Sequence[str],
    kinds: Sequence[Kind],
    lines: Sequence[int],
    report: ReadReport,
) -> tuple[list[pa.Array], np.ndarray]:
    """Convert the string columns of one chunk; drop and report rows holding a bad value.

    Returns the converted arrays and the boolean mask of kept rows (into the chunk).
    """
    n = len(lines)
    keep = np.ones(n, dtype=bool)
    out: list[pa.Array] = []
    for j, (values, kind) in enumerate(zip(columns, kinds, strict=True)):
        try:
            out.append(_convert_column(values, kind))
        except _CONVERT_ERRORS:
            out.append(pa.nulls(0))
            for i in _bad_positions(values, kind):
                if keep[i]:
                    keep[i] = False
                    v = values[i].as_py()
                    expected = _EXPECTED[kind] if isinstance(kind, str) else kind.expected
                    why = "missing value" if v in ("", None) else f"{brief(v)} is not {expected}"
                    report.add_bad(lines[i], f"field {names[j]}: {why}")
    if keep.all():
        return out, keep
    mask = pa.array(keep)
    arrays = [
        _convert_column(values.filter(mask), kind)
        for values, kind in zip(columns, kinds, strict=True)
    ]
    return arrays, keep


def parse_lines(lines: list[str], sep: str, width: int) -> list[pa.Array]:
    """Split ``lines`` (each exactly ``width`` fields, no quoting) into string columns.

    Uses Arrow's CSV parser with quoting and null detection off, so each field arrives as
    its raw text (``""`` for an empty field).
    """
    names = [f"f{j}" for j in range(width)]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(
            column_names=names, use_threads=False, block_size=max(len(data) + 1, 1 << 20)
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=sep,
            quote_char=False,
            double_quote=False,
            escape_char=False,
            newlines_in_values=False,
            ignore_empty_lines=False,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return [table.column(j).combine_chunks() for j in range(width)]


def batch_from_rows(
    rows: list[str],
    lines: list[int],
    names: Sequence[str | None],
    kinds: Sequence[str],
    report: ReadReport,
    extra: Callable[[dict[str, pa.Array], np.ndarray], dict[str, pa.Array]] | None = None,
    *,
    sep: str,
) -> pa.RecordBatch | None:
    """Build one batch from the text lines of a chunk (as given by :func:`split_chunks`).

    Columns whose name is None are dropped. ``extra(arrays, kept)`` may add or replace
    columns (``kept``: indices of the kept rows in ``rows``). Returns None when every row was
    bad.
    """
    if not rows:
        return None
    columns = parse_lines(rows, sep, len(names))
    chosen = [j for j, name in enumerate(names) if name is not None]
    out_names = [str(names[j]) for j in chosen]
    arrays, keep = columns_to_arrays(
        [columns[j] for j in chosen], out_names, [kinds[j] for j in chosen], lines, report
    )
    if not keep.any():
        return None
    cols = dict(zip(out_names, arrays, strict=True))
    if extra is not None:
        cols = extra(cols, np.flatnonzero(keep))
    return pa.RecordBatch.from_pydict(cols)


def split_chunks(
    lines: Iterable[str],
    *,
    sep: str,
    width: int,
    chunk_rows: int,
    report: ReadReport,
    first_line: int = 1,
    pad: bool = False,
) -> Iterator[tuple[list[str], list[int], list[int]]]:
    """Group text lines into chunks of lines holding ``width`` fields each.

    Yields ``(lines, line_numbers, row_numbers)`` with up to ``chunk_rows`` lines (line
    ends stripped); ``line_numbers`` are 1-based file lines (``first_line`` is the number of
    the first line given), ``row_numbers`` 0-based data rows counting malformed ones too,
    so they do not shift when a line is bad. Lines with more fields, empty lines, lines
    holding a carriage return and (unless ``pad``) lines with fewer fields are reported and
    skipped; with ``pad``, short lines get empty (missing) fields appended.
    """
    rows: list[str] = []
    line_nos: list[int] = []
    row_nos: list[int] = []
    for k, raw in enumerate(lines):
        line_no = first_line + k
        text = raw.rstrip("\r\n")
        if text == "":
            report.add_bad(line_no, "empty line")
            continue
        n_fields = text.count(sep) + 1
        if n_fields != width:
            if n_fields > width or not pad:
                most = "at most " if pad else ""
                report.add_bad(line_no, f"expected {most}{width} fields, got {n_fields}")
                continue
            text += sep * (width - n_fields)
        if "\r" in text:
            report.add_bad(line_no, "carriage return inside the line")
            continue
        rows.append(text)
        line_nos.append(line_no)
        row_nos.append(k)
        if len(rows) >= chunk_rows:
            yield rows, line_nos, row_nos
            rows, line_nos, row_nos = [], [], []
    if rows:
        yield rows, line_nos, row_nos


