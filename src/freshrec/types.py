"""Type aliases shared across freshrec."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["FeatureIds", "Rows", "Offsets", "RowIndex"]

FeatureIds = npt.NDArray[np.uint64]
"""A 1-d array of 64-bit feature ids (fids)."""
Rows = npt.NDArray[np.float32]
"""A 2-d float32 array, one embedding row per fid."""
Offsets = npt.NDArray[np.int64]
"""Jagged offsets: bag ``i`` holds values ``offsets[i]:offsets[i+1]``."""
RowIndex = npt.NDArray[np.int32]
"""Row positions inside a table; -1 means "not present"."""
