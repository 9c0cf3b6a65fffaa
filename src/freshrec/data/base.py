"""The base of the chunked readers: :class:`Reader` and its :class:`ReadReport`.

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
logged as a warning) and skipped; every other line is kept. The text parsing they share is
in :mod:`freshrec.data._parse`; :func:`freshrec.data.open_reader` builds a reader by format
name.

Examples
--------
>>> import tempfile, os
>>> import pyarrow as pa
>>> class Numbers(Reader):
...     def _batches(self, report):
...         report.add_bad(2, "not a number")
...         yield pa.RecordBatch.from_pydict({"n": [1, 3]})
>>> p = os.path.join(tempfile.mkdtemp(), "numbers.txt")
>>> open(p, "w").close()
>>> reader = Numbers(p)
>>> [b.num_rows for b in reader]
[2]
>>> reader.report.rows, reader.report.bad_lines, reader.report.examples[0].reason
(2, 1, 'not a number')
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from freshrec.errors import FreshrecError, InputError

__all__ = ["BadLine", "DataNotFoundError", "ReadReport", "Reader", "DEFAULT_CHUNK_ROWS"]

log = logging.getLogger(__name__)

#: Default number of rows per emitted batch.
DEFAULT_CHUNK_ROWS = 65_536


class DataNotFoundError(FreshrecError, FileNotFoundError):
    """A data path, or a file a data set needs, does not exist (the message names it and
    what was expected); ``freshrec train`` reports it as one error line."""


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

    def merge(self, other: ReadReport) -> None:
        """Add the bad lines of ``other`` (another file of the same read) to this report,
        keeping at most ``max_reported`` examples.

        >>> a, b = ReadReport(path="a.csv", max_reported=2), ReadReport(path="b.csv")
        >>> a.add_bad(2, "empty line"); b.add_bad(3, "empty line"); b.add_bad(4, "empty line")
        >>> a.merge(b)
        >>> a.bad_lines, [str(x) for x in a.examples]
        (3, ['a.csv:2: empty line', 'b.csv:3: empty line'])
        """
        self.bad_lines += other.bad_lines
        self.examples.extend(other.examples[: max(0, self.max_reported - len(self.examples))])

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
        self._check_path()
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

    def _check_path(self) -> None:
        """Raise if :attr:`path` is not usable (by default: it exists, a file or a directory
        as ``_expects_dir`` says)."""
        _check_path(self.path, type(self).__name__, directory=self._expects_dir)

    @abc.abstractmethod
    def _batches(self, report: ReadReport) -> Iterator[pa.RecordBatch]:
        """Yield the batches of one pass, counting malformed lines in ``report``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, chunk_rows={self.chunk_rows})"


def _check_path(path: Path, owner: str, *, directory: bool | None) -> None:
    """Raise :class:`DataNotFoundError`/:class:`InputError` naming ``path`` if unusable."""
    if not path.exists():
        raise DataNotFoundError(f"{owner}: data path {str(path)!r} does not exist")
    if directory is True and not path.is_dir():
        raise InputError(f"{owner}: data path {str(path)!r} must be a directory, got a file")
    if directory is False and path.is_dir():
        raise InputError(f"{owner}: data path {str(path)!r} must be a file, got a directory")

