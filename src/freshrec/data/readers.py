"""Chunked batch readers: the shared machinery and :func:`open_reader`.

Every reader is an iterable of :class:`pyarrow.RecordBatch` of at most ``chunk_rows`` rows,
holding the raw column values of the data set (strings stay strings, the feature layer hashes
them to fids later) plus two standard columns:

``event_time``
    int64 seconds of event time; for data without time, the 0-based row number in the file.
``label``
    float32 label (click, rating >= 4, ...).

Text readers read their file line by line, so memory stays bounded by one chunk (MovieLens
100K is the exception: its ratings file is not time-ordered, so it is read whole, sorted,
then emitted in chunks). A malformed line never stops a run: it is counted in the reader's
:class:`ReadReport` (file, line number and reason for the first ``max_reported`` lines, each
logged as a warning) and skipped; every other line is kept.

A chunk of lines is split by Arrow's CSV parser (no quoting: none of these formats quote)
and its columns converted with Arrow casts; only when a cast fails are the offending values
located (by bisection), so the fast path stays vectorised.

Examples
--------
>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> p = os.path.join(d, "day0.txt")
>>> with open(p, "w") as fh:
...     _ = fh.write("1\\t5\\t\\t\\t\\t\\t\\t\\t\\t\\t\\t\\t\\t\\tab12\\n")
...     _ = fh.write("0\\tx\\n")
>>> reader = open_reader("criteo", p, chunk_rows=1024)
>>> [b.num_rows for b in reader]
[1]
>>> reader.report.bad_lines, reader.report.examples[0].line
(1, 2)
"""

from __future__ import annotations

import abc
import gzip
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from freshrec.errors import InputError

__all__ = [
    "BadLine",
    "ReadReport",
    "Reader",
    "open_reader",
    "READER_FORMATS",
]

log = logging.getLogger(__name__)

#: Default number of rows per emitted batch.
DEFAULT_CHUNK_ROWS = 65_536


@dataclass(frozen=True, kw_only=True)
class BadLine:
    """One malformed line: where it is and why it was skipped."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(kw_only=True)
class ReadReport:
    """Counts of one pass of a reader over its file(s).

    Attributes
    ----------
    path : str
        The file read (the main one for readers that join several).
    rows : int
        Rows emitted.
    bad_lines : int
        Malformed lines skipped.
    examples : list of BadLine
        The first ``max_reported`` malformed lines (each was logged as a warning).

    Examples
    --------
    >>> r = ReadReport(path="a.txt", max_reported=1)
    >>> r.add_bad(3, "expected 40 fields, got 41")
    >>> r.add_bad(9, "field I2: 'x' is not an integer")
    >>> r.rows = 10
    >>> r
    ReadReport(path='a.txt', rows=10, bad_lines=2, first=['a.txt:3: expected 40 fields, got 41'])
    """

    path: str
    max_reported: int = 20
    rows: int = 0
    bad_lines: int = 0
    examples: list[BadLine] = field(default_factory=list)

    def add_bad(self, line: int, reason: str) -> None:
        """Count one malformed line (1-based ``line``), remembering and logging the first ones."""
        self.bad_lines += 1
        if len(self.examples) < self.max_reported:
            bad = BadLine(path=self.path, line=line, reason=reason)
            self.examples.append(bad)
            log.warning("malformed line skipped: %s", bad)
            if len(self.examples) == self.max_reported:
                log.warning("%s: further malformed lines are counted but not logged", self.path)

    def __repr__(self) -> str:
        first = [str(b) for b in self.examples]
        return (
            f"ReadReport(path={self.path!r}, rows={self.rows}, bad_lines={self.bad_lines}, "
            f"first={first!r})"
        )


class Reader(abc.ABC):
    """Base of the chunked readers: iterate to get batches, then look at :attr:`report`.

    Each ``iter(reader)`` reads the data again from the start with a fresh :attr:`report`.
    Subclasses implement :meth:`_batches`.

    Parameters
    ----------
    path : str or os.PathLike
        The file (or directory, for data sets made of several files).
    chunk_rows : int
        Rows per emitted batch (the last one may be shorter).
    max_reported : int
        How many malformed lines are remembered and logged individually.
    """

    #: Whether ``path`` must be a directory (True), a file (False) or either (None).
    _expects_dir: bool | None = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        max_reported: int = 20,
    ) -> None:
        name = type(self).__name__
        if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
            raise InputError(f"{name}: chunk_rows must be an int >= 1, got {chunk_rows!r}")
        if not isinstance(max_reported, int) or max_reported < 0:
            raise InputError(f"{name}: max_reported must be an int >= 0, got {max_reported!r}")
        self.path = Path(path)
        check_path(self.path, name, directory=self._expects_dir)
        self.chunk_rows = chunk_rows
        self.max_reported = max_reported
        self.report = ReadReport(path=str(self.path), max_reported=max_reported)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        self.report = ReadReport(path=str(self.path), max_reported=self.max_reported)
        return self._counted(self._batches(self.report))

    def _counted(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.report.rows += batch.num_rows
            yield batch
        log.info(
            "read done path=%s rows=%d bad_lines=%d",
            self.report.path,
            self.report.rows,
            self.report.bad_lines,
        )

    @abc.abstractmethod
    def _batches(self, report: ReadReport) -> Iterator[pa.RecordBatch]:
        """Yield the batches of one pass, counting malformed lines in ``report``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, chunk_rows={self.chunk_rows})"


def check_path(path: Path, owner: str, *, directory: bool | None) -> None:
    """Raise ``FileNotFoundError``/:class:`InputError` naming ``path`` if it is not usable."""
    if not path.exists():
        raise FileNotFoundError(f"{owner}: data path {str(path)!r} does not exist")
    if directory is True and not path.is_dir():
        raise InputError(f"{owner}: data path {str(path)!r} must be a directory, got a file")
    if directory is False and path.is_dir():
        raise InputError(f"{owner}: data path {str(path)!r} must be a file, got a directory")


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file (``.gz`` transparently); undecodable bytes become U+FFFD."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors="replace", newline="")  # type: ignore[return-value]
    return open(path, encoding=encoding, errors="replace", newline="")  # noqa: SIM115


# --- chunk conversion -----------------------------------------------------------------------

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


def _convert_column(values: pa.Array, kind: str) -> pa.Array:
    """Convert one string column; raise ``ValueError``/``ArrowInvalid`` if any value is bad."""
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


def _bad_positions(values: pa.Array, kind: str, start: int = 0) -> list[int]:
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
    kinds: Sequence[str],
    lines: list[int],
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
                    why = "missing value" if v == "" else f"{v!r} is not {_EXPECTED[kind]}"
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


# --- registry -------------------------------------------------------------------------------


def _registry() -> dict[str, type[Reader]]:
    from freshrec.data.arrow import ArrowReader
    from freshrec.data.criteo import CriteoReader
    from freshrec.data.movielens import MovieLensReader
    from freshrec.data.obd import OpenBanditReader

    return {
        "criteo": CriteoReader,
        "movielens": MovieLensReader,
        "obd": OpenBanditReader,
        "parquet": ArrowReader,
        "arrow": ArrowReader,
    }


#: Names accepted by :func:`open_reader`.
READER_FORMATS = ("criteo", "movielens", "obd", "parquet", "arrow")


def open_reader(fmt: str, path: str | os.PathLike[str], **options: Any) -> Reader:
    """Build the reader for data format ``fmt`` (one of :data:`READER_FORMATS`).

    ``options`` are the keyword arguments of that reader (``chunk_rows``, ...). ``"parquet"``
    and ``"arrow"`` both give an :class:`~freshrec.data.arrow.ArrowReader` with that file
    format.

    Raises
    ------
    InputError
        ``fmt`` is not a known format.
    FileNotFoundError
        ``path`` does not exist.
    """
    readers = _registry()
    if fmt not in readers:
        raise InputError(
            f"open_reader: fmt must be one of {', '.join(READER_FORMATS)}, got {fmt!r}"
        )
    if fmt in ("parquet", "arrow"):
        options.setdefault("file_format", "parquet" if fmt == "parquet" else "ipc")
    return readers[fmt](path, **options)
