"""Dense fields' normalisation, the same in training's batch path and serving's request path.

A missing value (null, ``None`` or NaN) becomes the field's ``fill``, then the field's
:class:`~freshrec.features.config.DenseNorm` applies, in float64 arithmetic; the result is
float32. :class:`DenseNormalizer` does it for several fields at once, or field by field.

Examples
--------
>>> import numpy as np
>>> from freshrec.features.config import DenseConfig
>>> norm = DenseNormalizer([DenseConfig(name="age", norm="standard", mean=30, std=10, fill=30),
...                         DenseConfig(name="price", norm="log")])
>>> norm(np.array([[40.0, np.e - 1], [np.nan, -3.0]])).tolist()
[[1.0, 1.0], [0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from freshrec.features.config import DenseConfig, DenseNorm

__all__ = ["DenseNormalizer"]


class DenseNormalizer:
    """Fills and normalises the values of ``configs``' fields, in their order.

    Parameters
    ----------
    configs : sequence of DenseConfig
        One per column of the values to normalise.
    """

    def __init__(self, configs: Sequence[DenseConfig]) -> None:
        self.configs = tuple(configs)
        # every norm but log is (x - sub) / div; none is (x - 0) / 1, exact
        shift = {DenseNorm.STANDARD: lambda d: (d.mean, d.std),
                 DenseNorm.MINMAX: lambda d: (d.min, d.max - d.min)}
        sd = [shift[d.norm](d) if d.norm in shift else (0.0, 1.0) for d in self.configs]
        self._fill = np.array([d.fill for d in self.configs], np.float64)
        self._sub = np.array([a for a, _ in sd], np.float64)
        self._div = np.array([b for _, b in sd], np.float64)
        self._is_log = np.array([d.norm is DenseNorm.LOG for d in self.configs], np.bool_)
        n_log = int(self._is_log.sum())
        self._log = np.flatnonzero(self._is_log) if 0 < n_log < len(self.configs) else None
        self._all_log = n_log == len(self.configs) > 0

    def __call__(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        """Normalised ``x``, shape ``(..., len(configs))`` float64 (NaN: missing): all fields
        at once (a request's user)."""
        nan = np.isnan(x)
        if nan.any():
            x = np.where(nan, self._fill, x)
        if self._all_log:
            return np.log1p(np.maximum(x, 0.0)).astype(np.float32)
        y = (x - self._sub) / self._div
        if self._log is not None:
            y[..., self._log] = np.log1p(np.maximum(x[..., self._log], 0.0))
        return y.astype(np.float32)

    def column(self, j: int, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        """Normalised values ``x`` (float64, NaN: missing) of field ``j`` alone: the same
        arithmetic as :meth:`__call__`, one field at a time (a training batch's column, a
        candidate feature), in arrays small enough to stay off fresh memory pages."""
        nan = np.isnan(x)
        if nan.any():
            x = np.where(nan, self._fill[j], x)
        if self._is_log[j]:
            return np.log1p(np.maximum(x, 0.0)).astype(np.float32)
        return ((x - self._sub[j]) / self._div[j]).astype(np.float32)

    def __repr__(self) -> str:
        return f"DenseNormalizer({[d.name for d in self.configs]})"
