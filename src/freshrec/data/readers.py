"""The reader of each data format, by name: :func:`open_reader` and :data:`READER_FORMATS`.

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

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from freshrec.data.arrow import ArrowReader
from freshrec.data.base import Reader
from freshrec.data.criteo import CriteoReader
from freshrec.data.movielens import MovieLensReader
from freshrec.data.obd import OpenBanditReader
from freshrec.errors import InputError

__all__ = ["open_reader", "READER_FORMATS"]

_READERS: Mapping[str, Callable[..., Reader]] = {
    "criteo": CriteoReader,
    "movielens": MovieLensReader,
    "obd": OpenBanditReader,
    "parquet": functools.partial(ArrowReader, file_format="parquet"),
    "arrow": functools.partial(ArrowReader, file_format="ipc"),
}

#: Names accepted by :func:`open_reader`.
READER_FORMATS: tuple[str, ...] = tuple(_READERS)


def open_reader(fmt: str, path: str | os.PathLike[str], **options: Any) -> Reader:
    """Build the reader for data format ``fmt``.

    Parameters
    ----------
    fmt : str
        One of :data:`READER_FORMATS`. ``"parquet"`` and ``"arrow"`` both give an
        :class:`~freshrec.data.arrow.ArrowReader` with that file format (``file_format`` in
        ``options`` overrides it).
    path : str or os.PathLike
        The data file or directory.
    **options
        The keyword arguments of that reader (``chunk_rows``, ...).

    Returns
    -------
    Reader

    Raises
    ------
    InputError
        ``fmt`` is not a known format.
    FileNotFoundError
        ``path`` does not exist.

    Examples
    --------
    >>> open_reader("csv", "data.csv")
    Traceback (most recent call last):
    ...
    freshrec.errors.InputError: open_reader: fmt must be one of criteo, movielens, obd, parquet, arrow, got 'csv'
    """
    if fmt not in _READERS:
        raise InputError(
            f"open_reader: fmt must be one of {', '.join(READER_FORMATS)}, got {fmt!r}"
        )
    return _READERS[fmt](path, **options)
