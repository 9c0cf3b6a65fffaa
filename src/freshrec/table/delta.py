"""A table delta: the rows written and the fids expired between two table versions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from freshrec.errors import InputError

__all__ = ["TableDelta"]


@dataclass(frozen=True, kw_only=True)
class TableDelta:
    """Rows written and fids removed in ``(from_version, to_version]`` of one table.

    Applying a delta removes ``expired`` first, then upserts ``fids``/``values`` (and
    ``states`` when present), so a fid that expired and came back ends up present.

    Parameters
    ----------
    table : str
        Name of the table it came from.
    fingerprint : str
        :meth:`TableConfig.fingerprint` of that table; receivers refuse another layout.
    from_version, to_version : int
        The delta brings a table at ``from_version`` to ``to_version``.
    fids : ndarray of uint64
        Fids of written rows.
    values : ndarray of float32, shape (n, dim)
    last_seen : ndarray of uint32
        Event time of each row's last training lookup (drives expiry on the receiver).
    states : ndarray of float32, shape (n, state_dim), optional
        Optimizer state; ``None`` for serving-only deltas.
    expired : ndarray of uint64
        Fids removed by expiry.

    Examples
    --------
    >>> d = TableDelta.empty("user", "f" * 16, dim=4, from_version=0, to_version=1)
    >>> d.num_rows, d.nbytes
    (0, 0)
    """

    table: str
    fingerprint: str
    from_version: int
    to_version: int
    fids: npt.NDArray[np.uint64]
    values: npt.NDArray[np.float32]
    last_seen: npt.NDArray[np.uint32]
    states: npt.NDArray[np.float32] | None
    expired: npt.NDArray[np.uint64]

    def __post_init__(self) -> None:
        n = self.fids.shape[0]
        if self.fids.dtype != np.uint64 or self.expired.dtype != np.uint64:
            raise InputError(f"TableDelta {self.table!r}: fids and expired must be uint64")
        if self.values.ndim != 2 or self.values.shape[0] != n:
            raise InputError(
                f"TableDelta {self.table!r}: values must have shape ({n}, dim), "
                f"got {self.values.shape}"
            )
        if self.last_seen.shape != (n,):
            raise InputError(f"TableDelta {self.table!r}: last_seen must have shape ({n},)")
        if self.states is not None and self.states.shape[0] != n:
            raise InputError(f"TableDelta {self.table!r}: states must have {n} rows")
        if self.to_version < self.from_version:
            raise InputError(
                f"TableDelta {self.table!r}: to_version {self.to_version} < "
                f"from_version {self.from_version}"
            )

    @classmethod
    def empty(
        cls, table: str, fingerprint: str, *, dim: int, from_version: int, to_version: int
    ) -> TableDelta:
        """A delta with no rows and no expired fids."""
        return cls(
            table=table, fingerprint=fingerprint, from_version=from_version,
            to_version=to_version, fids=np.empty(0, np.uint64),
            values=np.empty((0, dim), np.float32), last_seen=np.empty(0, np.uint32),
            states=None, expired=np.empty(0, np.uint64),
        )

    @property
    def num_rows(self) -> int:
        """Rows written by this delta."""
        return int(self.fids.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of array payload."""
        total = self.fids.nbytes + self.values.nbytes + self.last_seen.nbytes
        total += self.expired.nbytes
        if self.states is not None:
            total += self.states.nbytes
        return int(total)
