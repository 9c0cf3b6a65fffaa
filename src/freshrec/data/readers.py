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
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from freshrec.data.base import Reader
from freshrec.data.criteo import CriteoReader
from freshrec.data.movielens import MovieLensReader
from freshrec.data.obd import OpenBanditReader
from freshrec.data.tabular import TabularReader
from freshrec.errors import ConfigError, InputError

__all__ = ["open_reader", "READER_FORMATS"]

_READERS: Mapping[str, Callable[..., Reader]] = {
    "criteo": CriteoReader,
    "movielens": MovieLensReader,
    "obd": OpenBanditReader,
    "csv": functools.partial(TabularReader, file_format="csv"),
    "tsv": functools.partial(TabularReader, file_format="tsv"),
    "jsonl": functools.partial(TabularReader, file_format="jsonl"),
    "parquet": functools.partial(TabularReader, file_format="parquet"),
    "arrow": functools.partial(TabularReader, file_format="arrow"),
    "table": TabularReader,
}

#: Names accepted by :func:`open_reader`.
READER_FORMATS: tuple[str, ...] = tuple(_READERS)


def open_reader(fmt: str, path: str | os.PathLike[str], **options: Any) -> Reader:
    """Build the reader for data format ``fmt``.

    Parameters
    ----------
    fmt : str
        One of :data:`READER_FORMATS`. ``csv``, ``tsv``, ``jsonl``, ``parquet`` and
        ``arrow`` give a :class:`~freshrec.data.tabular.TabularReader` of that file format;
        ``table`` one that tells the format from the file suffix.
    path : str or os.PathLike
        The data file or directory.
    **options
        The keyword arguments of that reader (``chunk_rows``, the column roles of a
        :class:`~freshrec.data.tabular.TabularReader`, ...): ``data.options`` of the config.

    Returns
    -------
    Reader

    Raises
    ------
    InputError
        ``fmt`` is not a known format.
    ConfigError
        An option is not one of that reader's (names it and the accepted ones).
    DataNotFoundError
        ``path`` does not exist.

    Examples
    --------
    >>> open_reader("xls", "data.xls")
    Traceback (most recent call last):
    ...
    freshrec.errors.InputError: open_reader: fmt must be one of criteo, movielens, obd, csv, tsv, jsonl, parquet, arrow, table, got 'xls'
    """
    if fmt not in _READERS:
        raise InputError(
            f"open_reader: fmt must be one of {', '.join(READER_FORMATS)}, got {fmt!r}"
        )
    params = inspect.signature(_READERS[fmt]).parameters
    accepted = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    for key in options:
        if key not in accepted:
            raise ConfigError(f"data.options: format {fmt!r} has no option {key!r} (its "
                              f"options: {', '.join(accepted)})")
    return _READERS[fmt](path, **options)
