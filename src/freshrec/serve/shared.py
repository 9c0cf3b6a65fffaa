"""Embedding rows in shared memory: one copy read by every worker process.

A :class:`SharedTable` holds the serving part of one table (fids, rows, default row, an
open-addressing index: :mod:`freshrec.serve._kernels`) in one POSIX shared-memory segment.
The process that creates it (the updater of ``serve --workers N``) writes deltas into it in
place (:meth:`SharedTable.apply_delta`); worker processes attach to it by name and read it
through the two calls a :class:`~freshrec.serve.Predictor` makes on a table, ``find`` and
``pool``.

Readers and the writer are in different processes, so the table's thread mutex cannot
serialise them; a sequence counter in the segment's header does (a seqlock): the writer makes
it odd while it writes a chunk of rows and even again after, and :attr:`SharedTable.epoch`
waits for an even value. The predictor reads ``epoch`` before and after each find + pool and
redoes both when it moved, so a request never uses a row half-written. A delta whose new rows
do not fit the segment's spare rows is refused (``apply_delta`` returns ``False``); the
updater then builds a larger segment (a new generation) and the workers move to it.

Examples
--------
>>> import numpy as np
>>> t = SharedTable.create("item", np.array([7, 9], np.uint64),
...                        np.array([[1, 2], [3, 4]], np.float32), np.zeros(2, np.float32))
>>> rows = t.find(np.array([9, 5], np.uint64)); rows.tolist()
[1, -1]
>>> t.pool(rows, np.array([0, 1, 2]), np.ones(2, np.float32)).tolist()
[[3.0, 4.0], [0.0, 0.0]]
>>> reader = SharedTable.attach(t.segment, "item")   # as a worker process would
>>> reader.find(np.array([7], np.uint64)).tolist()
[0]
>>> reader.close(); t.close(); t.unlink()
"""

from __future__ import annotations

import time
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt

from freshrec.errors import InputError
from freshrec.serve import _kernels as K
from freshrec.table import TableConfig

__all__ = ["SharedTable"]

_HEADER = 8  # int64: seq, n_used, max_used, slots, dim, -, -, -
_SEQ, _USED, _MAX, _SLOTS, _DIM = range(5)


def _layout(max_used: int, slots: int, dim: int) -> list[tuple[str, Any, tuple[int, ...]]]:
    return [("header", np.int64, (_HEADER,)), ("keys", np.uint64, (max_used,)),
            ("emb", np.float32, (max_used, dim)), ("default", np.float32, (dim,)),
            ("index", np.int32, (slots,))]


class SharedTable:
    """One table's serving rows in a shared-memory segment (see the module docstring).

    Build with :meth:`create` (the writer) or :meth:`attach` (a reader).

    Parameters
    ----------
    shm : SharedMemory
        The segment.
    name : str
        The table's name (``Predictor`` tables are keyed by it).
    config : TableConfig, optional
        The table's config (what code that sees a predictor's tables may read, e.g. its
        ``backend``).
    """

    def __init__(self, shm: shared_memory.SharedMemory, name: str,
                 config: TableConfig | None = None) -> None:
        self.name = name
        self.config = config
        self._shm = shm
        head = np.ndarray((_HEADER,), np.int64, buffer=shm.buf)
        max_used, slots, dim = int(head[_MAX]), int(head[_SLOTS]), int(head[_DIM])
        off = 0
        arrays: dict[str, np.ndarray] = {}
        for key, dtype, shape in _layout(max_used, slots, dim):
            arrays[key] = np.ndarray(shape, dtype, buffer=shm.buf, offset=off)
            off += int(np.prod(shape)) * np.dtype(dtype).itemsize
        self._head = arrays["header"]
        self._keys, self._emb = arrays["keys"], arrays["emb"]
        self._default, self._index = arrays["default"], arrays["index"]
        self.dim = dim

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, name: str, fids: npt.NDArray[np.uint64], values: npt.NDArray[np.float32],
               default: npt.NDArray[np.float32], *, segment: str | None = None,
               headroom: float = 0.25, min_spare: int = 1024,
               config: TableConfig | None = None) -> SharedTable:
        """A new segment (named ``segment``, else a random name) holding ``fids`` ->
        ``values`` with room for ``headroom * len(fids) + min_spare`` more rows."""
        n, dim = values.shape
        max_used = n + int(n * headroom) + min_spare
        slots = 16
        while slots < 2 * max_used:  # load <= 1/2 counting tombstones
            slots *= 2
        size = sum(int(np.prod(s)) * np.dtype(d).itemsize
                   for _, d, s in _layout(max_used, slots, dim))
        shm = shared_memory.SharedMemory(name=segment, create=True, size=size)
        head = np.ndarray((_HEADER,), np.int64, buffer=shm.buf)
        head[:] = 0
        head[_MAX], head[_SLOTS], head[_DIM] = max_used, slots, dim
        t = cls(shm, name, config)
        t._index[:] = K.EMPTY
        t._default[:] = default
        used = K.upsert(t._index, t._keys, t._emb, 0, np.ascontiguousarray(fids, np.uint64),
                        np.ascontiguousarray(values, np.float32), max_used)
        t._head[_USED] = used
        return t

    @classmethod
    def attach(cls, segment: str, name: str, config: TableConfig | None = None
               ) -> SharedTable:
        """Attach to the segment ``segment`` created by another process (read only)."""
        try:
            shm = shared_memory.SharedMemory(name=segment)
        except FileNotFoundError as e:
            raise InputError(f"shared table {name!r}: no segment {segment!r}") from e
        # (Python < 3.13 registers an attached segment with the resource tracker too; worker
        # processes started by multiprocessing share their parent's tracker, which removes
        # segments only when every process has exited)
        return cls(shm, name, config)

    @property
    def segment(self) -> str:
        """The segment's name (what :meth:`attach` takes)."""
        return self._shm.name

    @property
    def nbytes(self) -> int:
        """Size of the segment."""
        return self._shm.size

    def __len__(self) -> int:
        return int(self._head[_USED])

    def __repr__(self) -> str:
        return f"SharedTable({self.name!r}, rows={len(self)}, segment={self.segment!r})"

    # ------------------------------------------------------------------ reads
    @property
    def epoch(self) -> int:
        """The write sequence number, once no write is in progress (a reader that sees it
        change across a find + pool redoes both)."""
        while True:
            seq = int(self._head[_SEQ])
            if not seq & 1:
                return seq
            time.sleep(0)

    def find(self, fids: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
        """Row of each fid, -1 where absent."""
        out = np.empty(fids.shape[0], np.int32)
        K.probe(self._index, self._keys, np.ascontiguousarray(fids, np.uint64), out)
        return out

    def pool(self, rows: npt.NDArray[np.int32], offsets: npt.NDArray[np.int64],
             scale: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None = None
             ) -> npt.NDArray[np.float32]:
        """Pooled bags: ``out[b] = scale[b] * sum(row(r) for r in bag b)`` (row -1: the
        default row); ``out``, if given, is written in place."""
        if out is None:
            out = np.empty((offsets.shape[0] - 1, self.dim), np.float32)
        K.pool(self._emb, rows, offsets, scale, self._default, out)
        return out

    def rows(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32],
                            npt.NDArray[np.float32]]:
        """Copies of ``(fids, values, default row)`` of the rows present."""
        live = self._index[self._index >= 0]
        return self._keys[live].copy(), self._emb[live].copy(), self._default.copy()

    # ------------------------------------------------------------------ writes
    def apply_delta(self, fids: npt.NDArray[np.uint64], values: npt.NDArray[np.float32],
                    expired: npt.NDArray[np.uint64], *, chunk_rows: int = 2048) -> bool:
        """Remove ``expired``, then write ``values`` to ``fids``, in chunks, each under the
        seqlock. Returns ``False`` (having written nothing) when the new fids do not fit the
        segment's spare rows: build a larger table instead."""
        fids = np.ascontiguousarray(fids, np.uint64)
        new = int((self.find(fids) < 0).sum()) if fids.shape[0] else 0
        if len(self) + new > int(self._head[_MAX]):
            return False
        values = np.ascontiguousarray(values, np.float32)
        expired = np.ascontiguousarray(expired, np.uint64)
        for a in range(0, expired.shape[0], chunk_rows):
            self._write(lambda a=a: K.remove(self._index, self._keys, expired[a:a + chunk_rows]))
        for a in range(0, fids.shape[0], chunk_rows):
            self._write(lambda a=a: self._upsert(fids[a:a + chunk_rows],
                                                 values[a:a + chunk_rows]))
        return True

    def _upsert(self, fids: np.ndarray, values: np.ndarray) -> None:
        self._head[_USED] = K.upsert(self._index, self._keys, self._emb, int(self._head[_USED]),
                                     fids, values, int(self._head[_MAX]))

    def _write(self, fn: Any) -> None:
        self._head[_SEQ] += 1
        try:
            fn()
        finally:
            self._head[_SEQ] += 1

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Unmap the segment in this process (arrays taken from it become invalid)."""
        self._head = self._keys = self._emb = self._default = self._index = None  # type: ignore[assignment]
        self._shm.close()

    def unlink(self) -> None:
        """Remove the segment's name (the writer, once no new reader will attach)."""
        self._shm.unlink()
