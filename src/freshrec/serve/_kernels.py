"""numba kernels of the serving hot path (private). See :mod:`freshrec.serve.predictor`."""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec.table._kernels import mix64


@njit(cache=True, nogil=True)
def hash_ints_keyed(keys: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = mix64(keys[i] ^ mix64(values[i]))``: the fids of int values of several slots
    at once (``keys[i]``: the slot key of value ``i``, :func:`freshrec.features.hashing.slot_key`),
    equal to :func:`~freshrec.features.hash_array` slot by slot."""
    for i in range(values.shape[0]):
        out[i] = mix64(keys[i] ^ mix64(np.uint64(values[i])))
