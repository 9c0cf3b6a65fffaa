"""A read-only copy of a table's rows: what :meth:`EmbeddingTable.read_rows` returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["TableRows"]


@dataclass(frozen=True, kw_only=True)
class TableRows:
    """Some live rows of a table, copied under its lock: one consistent cut.

    Reading them changes nothing in the table (not its version either), so tests and tools
    can look at a table while it is in use.

    Parameters
    ----------
    fids : ndarray of uint64, shape (n,)
    values : ndarray of float32, shape (n, dim)
    states : ndarray of float32, shape (n, state_dim), or None
        Optimizer state; None when read without it.
    last_seen : ndarray of uint32, shape (n,)
        Event time of each row's last training lookup.
    versions : ndarray of uint32, shape (n,)
        The table version each row was last written in.

    Examples
    --------
    >>> from freshrec.table import EmbeddingTable, TableConfig
    >>> t = EmbeddingTable(TableConfig(name="user", dim=2))
    >>> _ = t.lookup(np.array([9, 4], np.uint64), now=30, train=True)
    >>> rows = t.read_rows()
    >>> rows.fids.tolist(), rows.last_seen.tolist(), rows.versions.tolist(), len(rows)
    ([4, 9], [30, 30], [1, 1], 2)
    >>> rows.as_dict()[9].shape
    (2,)
    """

    fids: npt.NDArray[np.uint64]
    values: npt.NDArray[np.float32]
    states: npt.NDArray[np.float32] | None
    last_seen: npt.NDArray[np.uint32]
    versions: npt.NDArray[np.uint32]

    def __len__(self) -> int:
        return int(self.fids.shape[0])

    def as_dict(self) -> dict[int, npt.NDArray[np.float32]]:
        """``{fid: row}``."""
        return {int(f): self.values[i] for i, f in enumerate(self.fids)}
