"""numba kernels of the sharding (pure functions over arrays; see ``tests/dist``)."""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec.table._kernels import mix64


@njit(cache=True, nogil=True)
def owner_ranks(fids: np.ndarray, salt: np.uint64, world: int, out: np.ndarray) -> None:
    """``out[i] = (mix64(fids[i] ^ salt) >> 32) % world``: the rank owning each fid.

    The high half of a salted mix is used so that a shard's fids stay spread over every slot
    of its table's index (which is addressed by the low bits of the unsalted ``mix64``).
    """
    w = np.uint64(world)
    for i in range(fids.shape[0]):
        out[i] = np.int64((mix64(fids[i] ^ salt) >> np.uint64(32)) % w)
