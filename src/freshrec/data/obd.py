"""Reader of the Open Bandit Dataset (ZOZOTOWN fashion recommendations, logged bandit feedback).

A campaign directory (e.g. ``obd/random/all``) holds ``all.csv``, one impression per line in
time order (an unnamed row-index column, ``timestamp``, ``item_id``, ``position``,
``click``, ``propensity_score``, ``user_feature_0..3`` as hashed strings and
``user-item_affinity_0..79`` floats), and ``item_context.csv`` (``item_id``,
``item_feature_0`` float, ``item_feature_1..3`` hashed strings).

The reader streams ``all.csv`` in file (= time) order and joins each row with its item's
context. Emitted columns: ``event_time`` (int64 Unix seconds of ``timestamp``, which must
carry a zone offset), ``item_id`` and ``position`` (int64), ``label`` (float32 click),
``propensity_score`` (float32), every ``user_feature_*`` and ``item_feature_1..`` column
(string), ``item_feature_0`` and the affinities (float32), with ``-`` in column names
replaced by ``_`` (``user_item_affinity_0``). Unknown extra columns are kept as strings.
A row whose item has no context gets null item features (it is not dropped).

Examples
--------
>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> with open(os.path.join(d, "all.csv"), "w") as fh:
...     _ = fh.write(",timestamp,item_id,position,click,propensity_score,user_feature_0\\n")
...     _ = fh.write("0,2019-11-24 00:00:17.004+00:00,3,1,0,0.0125,81ce\\n")
...     _ = fh.write("1,2019-11-24 00:00:19.715+00:00,4,2,1,0.0125,2d03\\n")
>>> with open(os.path.join(d, "item_context.csv"), "w") as fh:
...     _ = fh.write(",item_id,item_feature_0,item_feature_1\\n0,3,-0.5,527a\\n")
>>> b = next(iter(OpenBanditReader(d)))
>>> b.column("event_time").to_pylist(), b.column("label").to_pylist()
([1574553617, 1574553619], [0.0, 1.0])
>>> b.column("item_feature_1").to_pylist()
['527a', None]
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from freshrec.data._parse import batch_from_rows, open_text, split_chunks
from freshrec.data.base import DEFAULT_CHUNK_ROWS, DataNotFoundError, Reader, ReadReport
from freshrec.errors import InputError

__all__ = ["OpenBanditReader"]

_REQUIRED = ("timestamp", "item_id", "position", "click")
_CONTEXT_FILE = "item_context.csv"
_LOG_FILE = "all.csv"


def _kind(name: str) -> str:
    if name == "timestamp":
        return "iso_time"
    if name in ("item_id", "position"):
        return "int"
    if name == "click":
        return "label"
    if name in ("propensity_score", "item_feature_0") or name.startswith("user-item_affinity"):
        return "float"
    return "str"


def _out_name(name: str) -> str:
    return {"timestamp": "event_time", "click": "label"}.get(name, name.replace("-", "_"))


def _read_header(fh: object, path: Path, required: tuple[str, ...]) -> list[str]:
    header = fh.readline().rstrip("\r\n")  # type: ignore[attr-defined]
    names = header.split(",")
    missing = [n for n in required if n not in names]
    if missing:
        raise InputError(
            f"{path}:1: header must name the columns {', '.join(required)}; "
            f"missing {', '.join(missing)} (got {header[:80]!r})"
        )
    return names


def _log_file(directory: Path) -> Path:
    """The impression log of a campaign directory: ``all.csv``, else ``<directory>.csv``
    (``random/men/men.csv``), else its only CSV besides ``item_context.csv``."""
    for name in (_LOG_FILE, f"{directory.name}.csv"):
        if (directory / name).is_file():
            return directory / name
    found = sorted(f.name for f in directory.glob("*.csv") if f.name != _CONTEXT_FILE)
    if len(found) == 1:
        return directory / found[0]
    raise DataNotFoundError(
        f"OpenBanditReader: directory {str(directory)!r} holds no {_LOG_FILE} and "
        + (f"several CSV files ({', '.join(found)}): pass the impression log itself, e.g. "
           f"--data {str(directory / found[0])!r}" if found else "no other CSV file")
    )


class OpenBanditReader(Reader):
    """Stream an Open Bandit Dataset campaign as Arrow batches (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The campaign directory holding ``all.csv`` (or ``<directory>.csv``, or one other
        CSV file; and ``item_context.csv``, optional), or the log CSV itself (its context
        file is then looked for beside it).
    chunk_rows : int
        Rows per batch.
    max_reported : int
        Malformed lines remembered and logged individually.

    Raises
    ------
    DataNotFoundError
        ``path`` does not exist, or a directory without a log CSV (or with several and no
        ``all.csv``); a ``FileNotFoundError``.
    InputError
        A header lacks ``timestamp``, ``item_id``, ``position`` or ``click``.
    """

    _expects_dir = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        max_reported: int = 20,
    ) -> None:
        p = Path(path)
        if p.is_dir():
            p = _log_file(p)
        super().__init__(p, chunk_rows=chunk_rows, max_reported=max_reported)
        self.context_path = self.path.parent / _CONTEXT_FILE

    def read_item_context(self, report: ReadReport | None = None) -> pa.Table | None:
        """The item context table (``item_id`` first), or None when the file is absent."""
        path = self.context_path
        if not path.is_file():
            return None
        report = report or ReadReport(path=str(path), max_reported=self.max_reported)
        with open_text(path) as fh:
            names = _read_header(fh, path, ("item_id",))
            kinds = ["str" if n == "" else _kind(n) for n in names]
            batches = []
            for rows, line_nos, _ in split_chunks(
                fh, sep=",", width=len(names), chunk_rows=1 << 16, report=report, first_line=2
            ):
                b = batch_from_rows(
                    rows, line_nos, [n or None for n in names], kinds, report, sep=","
                )
                if b is not None:
                    batches.append(b)
        if not batches:
            return None
        return pa.Table.from_batches(batches)

    def _batches(self, report: ReadReport) -> Iterator[pa.RecordBatch]:
        ctx_report = ReadReport(path=str(self.context_path), max_reported=self.max_reported)
        context = self.read_item_context(ctx_report)
        report.merge(ctx_report)
        with open_text(self.path) as fh:
            names = _read_header(fh, self.path, _REQUIRED)
            kinds = [_kind(n) for n in names]
            out_names = [_out_name(n) if n else None for n in names]
            for rows, line_nos, _ in split_chunks(
                fh,
                sep=",",
                width=len(names),
                chunk_rows=self.chunk_rows,
                report=report,
                first_line=2,
            ):
                batch = batch_from_rows(rows, line_nos, out_names, kinds, report, sep=",")
                if batch is None:
                    continue
                if context is not None:
                    batch = _join_context(batch, context)
                yield batch


def _join_context(batch: pa.RecordBatch, context: pa.Table) -> pa.RecordBatch:
    pos = pc.index_in(batch.column("item_id"), value_set=context.column("item_id"))
    cols = {name: batch.column(name) for name in batch.schema.names}
    for name in context.column_names:
        if name == "item_id" or name in cols:
            continue
        cols[_out_name(name)] = context.column(name).combine_chunks().take(pos)
    return pa.RecordBatch.from_pydict(cols)
