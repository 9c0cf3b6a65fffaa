"""Reader of MovieLens 100K ratings joined with user and movie attributes, in time order.

The directory holds ``u.data`` (``user_id, item_id, rating, timestamp``, tab separated),
``u.user`` (``user_id|age|gender|occupation|zip``) and ``u.item`` (``item_id|title|release
date|video release date|url|`` then 19 genre flags; Latin-1). ``u.data`` is not time-ordered,
so it is read whole (100 K rows), stably sorted by timestamp, and emitted in chunks.

Emitted columns: ``user_id``, ``item_id`` (int64), ``rating`` (float32), ``age`` (int64),
``gender``, ``occupation``, ``zip`` (string), ``release_year`` (int64, null when unknown),
``genres`` (list of genre names), ``hist_items`` (list of int64: the user's last
``history`` rated items strictly before this row in time order, oldest first),
``event_time`` (int64 Unix seconds) and ``label`` (float32: ``rating >= min_positive``).
A rating whose user or movie is missing from ``u.user``/``u.item`` keeps null attributes.

Examples
--------
>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> def write(name, text):
...     with open(os.path.join(d, name), "w") as fh:
...         _ = fh.write(text)
>>> write("u.data", "1\\t10\\t5\\t200\\n1\\t11\\t2\\t100\\n")
>>> write("u.user", "1|24|M|technician|85711\\n")
>>> write("u.item", "10|Toy Story (1995)|01-Jan-1995||url" + "|0" * 3 + "|1" + "|0" * 15 + "\\n")
>>> write("u.genre", "Animation|3\\n")
>>> b = next(iter(MovieLensReader(d)))
>>> b.column("item_id").to_pylist(), b.column("label").to_pylist()
([11, 10], [0.0, 1.0])
>>> b.column("hist_items").to_pylist(), b.column("genres").to_pylist()  # item 11 unknown
([[], [11]], [None, ['Animation']])
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.data._parse import batch_from_rows, open_text, split_chunks
from freshrec.data.base import DEFAULT_CHUNK_ROWS, DataNotFoundError, Reader, ReadReport
from freshrec.errors import InputError

__all__ = ["MovieLensReader", "ML100K_GENRES"]

#: Genre names in ``u.item`` flag order (used when ``u.genre`` is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_YEAR = re.compile(r"(\d{4})\s*$")


class MovieLensReader(Reader):
    """Read MovieLens 100K as time-ordered Arrow batches (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The ``ml-100k`` directory.
    chunk_rows : int
        Rows per batch.
    history : int
        Length of the ``hist_items`` column (most recent items kept); 0 gives empty lists.
    min_positive : int
        Ratings at or above it are positives.
    max_reported : int
        Malformed lines remembered and logged individually.

    Raises
    ------
    DataNotFoundError
        ``path`` or one of ``u.data``, ``u.user``, ``u.item`` does not exist (a
        ``FileNotFoundError``).
    """

    _expects_dir = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        history: int = 20,
        min_positive: int = 4,
        max_reported: int = 20,
    ) -> None:
        super().__init__(path, chunk_rows=chunk_rows, max_reported=max_reported)
        for name in ("u.data", "u.user", "u.item"):
            if not (self.path / name).is_file():
                raise DataNotFoundError(
                    f"MovieLensReader: {str(self.path / name)!r} does not exist (format "
                    "movielens reads the ml-100k layout: u.data, u.user, u.item); for another "
                    "layout such as ratings.csv use format csv, e.g. "
                    f"freshrec init --data {str(self.path / 'ratings.csv')!r}"
                )
        if not isinstance(history, int) or history < 0:
            raise InputError(f"MovieLensReader: history must be an int >= 0, got {history!r}")
        self.history = history
        self.min_positive = min_positive

    def _read_table(
        self, name: str, sep: str, names: list[str], kinds: list[str], report: ReadReport
    ) -> pa.Table:
        path = self.path / name
        batches = []
        with open_text(path, encoding="latin-1") as fh:
            for rows, line_nos, _ in split_chunks(
                fh, sep=sep, width=len(names), chunk_rows=1 << 16, report=report
            ):
                b = batch_from_rows(rows, line_nos, names, kinds, report, sep=sep)
                if b is not None:
                    batches.append(b)
        if not batches:
            types = {"int": pa.int64(), "time": pa.int64(), "float": pa.float32()}
            schema = pa.schema(
                [(n, types.get(k, pa.string())) for n, k in zip(names, kinds, strict=True)]
            )
            return schema.empty_table()
        return pa.Table.from_batches(batches)

    def _genres(self) -> tuple[str, ...]:
        path = self.path / "u.genre"
        if not path.is_file():
            return ML100K_GENRES
        names: dict[int, str] = {}
        with open_text(path, encoding="latin-1") as fh:
            for line in fh:
                name, _, idx = line.strip().rpartition("|")
                if name and idx.isdigit():
                    names[int(idx)] = name
        return tuple(names.get(i, ML100K_GENRES[i]) for i in range(len(ML100K_GENRES)))

    def _batches(self, report: ReadReport) -> Iterator[pa.RecordBatch]:
        sub = {
            name: ReadReport(path=str(self.path / name), max_reported=self.max_reported)
            for name in ("u.data", "u.user", "u.item")
        }
        ratings = self._read_table(
            "u.data", "\t", ["user_id", "item_id", "rating", "event_time"],
            ["int", "int", "float", "time"], sub["u.data"],
        )  # fmt: skip
        users = self._read_table(
            "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"],
            ["int", "int", "str", "str", "str"], sub["u.user"],
        )  # fmt: skip
        genre_names = self._genres()
        item_names = ["item_id", "title", "release", "video_release", "url"]
        item_names += [f"g{i}" for i in range(len(genre_names))]
        items = self._read_table(
            "u.item", "|", item_names,
            ["int", "str", "str", "str", "str", *["int"] * len(genre_names)], sub["u.item"],
        )  # fmt: skip
        for r in sub.values():
            report.merge(r)

        order = np.argsort(ratings.column("event_time").to_numpy(), kind="stable")
        ratings = ratings.take(pa.array(order))
        user_ids = ratings.column("user_id").to_numpy()
        item_ids = ratings.column("item_id").to_numpy()

        upos = pc.index_in(ratings.column("user_id"), value_set=users.column("user_id"))
        ipos = pc.index_in(ratings.column("item_id"), value_set=items.column("item_id"))
        user_cols = {n: users.column(n).take(upos) for n in ("age", "gender", "occupation", "zip")}
        years = [
            int(m.group(1)) if s is not None and (m := _YEAR.search(s)) else None
            for s in items.column("release").to_pylist()
        ]
        flags = np.stack(
            [items.column(f"g{i}").fill_null(0).to_numpy() for i in range(len(genre_names))],
            axis=1,
        ) if items.num_rows else np.zeros((0, len(genre_names)), np.int64)  # fmt: skip
        genres = [[genre_names[j] for j in np.flatnonzero(row)] for row in flags]
        item_cols = {
            "release_year": pa.array(years, pa.int64()).take(ipos),
            "genres": pa.array(genres, pa.list_(pa.string())).take(ipos),
        }
        hist = _histories(user_ids, item_ids, self.history)
        label = (ratings.column("rating").to_numpy() >= self.min_positive).astype(np.float32)
        table = pa.table(
            {
                "user_id": ratings.column("user_id"),
                "item_id": ratings.column("item_id"),
                "rating": ratings.column("rating"),
                **user_cols,
                **item_cols,
                "hist_items": hist,
                "event_time": ratings.column("event_time"),
                "label": pa.array(label),
            }
        )
        yield from table.to_batches(max_chunksize=self.chunk_rows)


def _histories(user_ids: np.ndarray, item_ids: np.ndarray, length: int) -> pa.ListArray:
    """Per row, the user's last ``length`` items strictly before it (rows in time order)."""
    recent: dict[int, deque[int]] = {}
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int32)
    values: list[int] = []
    for k, (u, i) in enumerate(zip(user_ids.tolist(), item_ids.tolist(), strict=True)):
        q = recent.get(u)
        if q is None:
            q = recent[u] = deque(maxlen=length)
        values.extend(q)
        offsets[k + 1] = len(values)
        if length:
            q.append(i)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))
