"""Reader of Parquet and Arrow IPC (Feather v2) files or directories of them.

Batches are streamed with :mod:`pyarrow.dataset`, so only one batch (plus Arrow's read-ahead)
is in memory. The standard columns are added when missing: ``label`` (float32) is cast from
``label_column``; ``event_time`` (int64 seconds) is cast from ``time_column`` (timestamps are
converted from their unit) or, when there is none, is the 0-based row number. Columns
already named ``label``/``event_time`` are cast to those types.
Every other column is passed through unchanged.

Examples
--------
>>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
>>> p = os.path.join(tempfile.mkdtemp(), "clicks.parquet")
>>> pq.write_table(pa.table({"user": ["a", "b", "c"], "click": [0, 1, 0]}), p)
>>> r = ArrowReader(p, chunk_rows=2, label_column="click")
>>> [b.column("event_time").to_pylist() for b in r]
[[0, 1], [2]]
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from freshrec.data.base import DEFAULT_CHUNK_ROWS, Reader, ReadReport
from freshrec.errors import InputError

__all__ = ["ArrowReader"]

_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "ipc", ".feather": "ipc",
             ".ipc": "ipc"}  # fmt: skip


class ArrowReader(Reader):
    """Stream a Parquet or Arrow IPC file (or a directory of them) in batches.

    Parameters
    ----------
    path : str or os.PathLike
        A file or a directory of files of one format.
    chunk_rows : int
        Maximum rows per batch (batches end at file and row-group boundaries too).
    file_format : {"parquet", "ipc"} or None
        None detects it from the file suffix (``.parquet``/``.pq``, ``.arrow``/``.feather``/
        ``.ipc``), defaulting to Parquet.
    label_column, time_column : str or None
        Source of ``label`` and ``event_time`` when the data has no column of that name.
    max_reported : int
        Kept for a uniform signature (binary files have no malformed lines).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    InputError
        A named column is missing, or the file is not of the expected format.
    """

    _expects_dir = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        file_format: str | None = None,
        label_column: str | None = None,
        time_column: str | None = None,
        max_reported: int = 20,
    ) -> None:
        super().__init__(path, chunk_rows=chunk_rows, max_reported=max_reported)
        if file_format is None:
            file_format = _SUFFIXES.get(self.path.suffix.lower(), "parquet")
        if file_format not in ("parquet", "ipc"):
            raise InputError(
                f"ArrowReader: file_format must be 'parquet', 'ipc' or None, got {file_format!r}"
            )
        self.file_format = file_format
        self.label_column = label_column
        self.time_column = time_column

    def _dataset(self) -> ds.Dataset:
        try:
            return ds.dataset(str(self.path), format=self.file_format)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(
                f"ArrowReader: cannot read {str(self.path)!r} as {self.file_format}: {e}"
            ) from e

    def _batches(self, report: ReadReport) -> Iterator[pa.RecordBatch]:
        dataset = self._dataset()
        names = dataset.schema.names
        for col in (self.label_column, self.time_column):
            if col is not None and col not in names:
                raise InputError(
                    f"ArrowReader: {str(self.path)!r} has no column {col!r} "
                    f"(columns: {', '.join(names)})"
                )
        label_src = "label" if "label" in names else self.label_column
        time_src = "event_time" if "event_time" in names else self.time_column
        row = 0
        try:
            for batch in dataset.to_batches(batch_size=self.chunk_rows):
                if batch.num_rows == 0:
                    continue
                cols = {n: batch.column(n) for n in batch.schema.names}
                if label_src is not None:
                    cols["label"] = pc.cast(batch.column(label_src), pa.float32())
                if time_src is not None:
                    cols["event_time"] = _seconds(batch.column(time_src))
                else:
                    cols["event_time"] = pa.array(range(row, row + batch.num_rows), pa.int64())
                row += batch.num_rows
                yield pa.RecordBatch.from_pydict(cols)
        except pa.ArrowInvalid as e:
            raise InputError(
                f"ArrowReader: {str(self.path)!r}: cannot read or cast a batch: {e}"
            ) from e


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _seconds(col: pa.Array) -> pa.Array:
    """int64 seconds of a time column (timestamps converted from their unit, numbers cast)."""
    if pa.types.is_timestamp(col.type):
        return pc.divide(pc.cast(col, pa.int64()), _PER_SECOND[col.type.unit])
    return pc.cast(col, pa.int64())
