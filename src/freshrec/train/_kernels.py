"""numba kernels of the trainer (private)."""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec.table._kernels import unit_float


@njit(cache=True, nogil=True)
def row_coins(seed: np.uint64, first_row: np.int64, n: int, salt: np.uint64) -> np.ndarray:
    """Deterministic uniform draws in [0, 1), one per global row ``first_row + i``."""
    out = np.empty(n, np.float64)
    for i in range(n):
        out[i] = unit_float(seed, np.uint64(first_row + i), salt)
    return out
