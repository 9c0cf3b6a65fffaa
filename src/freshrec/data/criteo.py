"""Reader of Criteo display-advertising logs (Kaggle challenge format).

Each line holds 40 fields: the click label, 13 integer features ``I1..I13`` and 26
categorical features ``C1..C26`` written as 32-bit hex hashes. The Kaggle file is tab
separated without a header and trims trailing empty fields, so short lines are padded with
missing values. The DeepCTR sample writes the same columns comma separated with a header
line and integral floats (``260.0``) in the integer columns; both are read.

Auto-detection (``sep=None``, ``header=None``) looks at the first line only: the separator is a
tab if the line holds one, else a comma; the line is a header if its first field is not a
number (it must then name the 40 standard columns). Pass ``sep``/``header`` to override.

Emitted columns: ``label`` (float32), ``I1..I13`` (int64, null when empty), ``C1..C26``
(string, null when empty), ``event_time`` (int64: the 0-based data-row number, as Criteo
has no timestamps but the Kaggle file is in time order). Malformed lines (more than 40
fields, a label or integer that does not parse, a categorical that is not hex) are counted in
the report and skipped.

Examples
--------
>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "train.txt")
>>> with open(p, "w") as fh:
...     _ = fh.write("0\\t1\\t2" + "\\t" * 11 + "\\t68fd1e64\\n1\\t\\t7\\n")
>>> batch = next(iter(CriteoReader(p)))
>>> batch.column("I2").to_pylist(), batch.column("C1").to_pylist()
([2, 7], ['68fd1e64', None])
>>> batch.column("label").to_pylist(), batch.column("event_time").to_pylist()
([0.0, 1.0], [0, 1])
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from freshrec.data._parse import batch_from_rows, open_text, split_chunks
from freshrec.data.base import DEFAULT_CHUNK_ROWS, Reader, ReadReport
from freshrec.errors import InputError

__all__ = ["CriteoReader", "CRITEO_COLUMNS"]

INT_COLUMNS = tuple(f"I{i}" for i in range(1, 14))
CAT_COLUMNS = tuple(f"C{i}" for i in range(1, 27))
#: The 40 raw columns in file order.
CRITEO_COLUMNS = ("label", *INT_COLUMNS, *CAT_COLUMNS)
_KINDS = ("label", *("int",) * 13, *("hex",) * 26)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class CriteoReader(Reader):
    """Stream a Criteo TSV/CSV file as Arrow batches (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The file (``.gz`` is decompressed on the fly).
    chunk_rows : int
        Rows per batch.
    sep : str or None
        Field separator; None detects tab or comma from the first line.
    header : bool or None
        Whether the first line is a header; None detects it.
    max_reported : int
        Malformed lines remembered and logged individually.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    InputError
        ``path`` is a directory, or a detected header does not name the 40 Criteo columns.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        sep: str | None = None,
        header: bool | None = None,
        max_reported: int = 20,
    ) -> None:
        super().__init__(path, chunk_rows=chunk_rows, max_reported=max_reported)
        if sep is not None and (not isinstance(sep, str) or len(sep) != 1):
            raise InputError(f"CriteoReader: sep must be one character or None, got {sep!r}")
        self.sep = sep
        self.header = header

    def _detect(self, first: str) -> tuple[str, bool]:
        sep = self.sep
        if sep is None:
            sep = "\t" if "\t" in first else ","
        header = self.header
        if header is None:
            header = not _is_number(first.split(sep, 1)[0])
        if header and self.header is None:
            names = tuple(f.strip() for f in first.split(sep))
            if names != CRITEO_COLUMNS:
                raise InputError(
                    f"{self.path}:1: header expected the 40 Criteo columns "
                    f"(label, I1..I13, C1..C26), got {list(names)[:6]}... "
                    f"({len(names)} names); pass header=False if this is data"
                )
        return sep, header

    def _batches(self, report: ReadReport) -> Iterator[pa.RecordBatch]:
        with open_text(self.path) as fh:
            first = fh.readline()
            if not first:
                return
            sep, header = self._detect(first.rstrip("\r\n"))
            lines: Iterable[str] = fh if header else itertools.chain([first], fh)
            for rows, line_nos, row_nos in split_chunks(
                lines,
                sep=sep,
                width=len(CRITEO_COLUMNS),
                chunk_rows=self.chunk_rows,
                report=report,
                first_line=2 if header else 1,
                pad=True,
            ):
                batch = self._build(rows, line_nos, row_nos, report, sep)
                if batch is not None:
                    yield batch

    def _build(
        self,
        rows: list[str],
        lines: list[int],
        times: list[int],
        report: ReadReport,
        sep: str,
    ) -> pa.RecordBatch | None:
        def extra(cols: dict[str, pa.Array], kept: np.ndarray) -> dict[str, pa.Array]:
            cols["event_time"] = pa.array(np.asarray(times, dtype=np.int64)[kept])
            return cols

        return batch_from_rows(rows, lines, CRITEO_COLUMNS, _KINDS, report, extra, sep=sep)
