"""Data sets as streams of Arrow record batches.

Readers turn the data sets at hand (Criteo logs, MovieLens 100K, the Open Bandit Dataset)
and any tabular file (CSV, TSV, JSON lines, Parquet, Arrow; :class:`TabularReader`, whose
column roles are the config's ``data.options``) into batches of at most ``chunk_rows`` rows that hold the raw
column values plus two standard columns, ``event_time`` (int64 seconds, or the row number for
data without time) and ``label`` (float32). Raw strings stay strings: the feature layer
hashes them to feature ids. A malformed line is counted in the reader's :class:`ReadReport`
with its file and line number and skipped; the run goes on. A :class:`Prefetcher` runs any
reader (plus a transform) on a background thread so preparation overlaps training.

Examples
--------
>>> import tempfile, os
>>> from freshrec.data import CriteoReader, Prefetcher
>>> p = os.path.join(tempfile.mkdtemp(), "train.txt")
>>> with open(p, "w") as fh:
...     _ = fh.write("1\\t3\\n0\\tnot-a-number\\n0\\t4\\n")
>>> reader = CriteoReader(p, chunk_rows=2)
>>> with Prefetcher(reader, transform=lambda b: b.num_rows) as batches:
...     list(batches)
[1, 1]
>>> reader.report.bad_lines
1
"""

from freshrec.data.base import BadLine, DataNotFoundError, Reader, ReadReport
from freshrec.data.criteo import CRITEO_COLUMNS, CriteoReader
from freshrec.data.movielens import ML100K_GENRES, MovieLensReader
from freshrec.data.obd import OpenBanditReader
from freshrec.data.obd_replay import open_bandit_events
from freshrec.data.prefetch import Prefetcher
from freshrec.data.readers import READER_FORMATS, open_reader
from freshrec.data.simulate import (
    ClickStreamSimulator,
    SimulateJobConfig,
    SimulatorConfig,
    write_to_log,
)
from freshrec.data.tabular import HistoryBuilder, TabularReader

__all__ = [
    "BadLine",
    "DataNotFoundError",
    "HistoryBuilder",
    "TabularReader",
    "CRITEO_COLUMNS",
    "CriteoReader",
    "ML100K_GENRES",
    "MovieLensReader",
    "OpenBanditReader",
    "Prefetcher",
    "READER_FORMATS",
    "ReadReport",
    "Reader",
    "open_reader",
    "open_bandit_events",
    "ClickStreamSimulator",
    "SimulatorConfig",
    "SimulateJobConfig",
    "write_to_log",
]
