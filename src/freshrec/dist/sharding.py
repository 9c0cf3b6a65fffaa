"""Row-wise sharding by hash: which rank owns a fid.

Every table is split by the same rule, so a fid has one owner whatever table it is in, and a
checkpoint written by N ranks can be re-sharded to M by reading every shard and keeping the
rows each new rank owns.

Examples
--------
>>> import numpy as np
>>> owners = owner_ranks(np.arange(10_000, dtype=np.uint64), 3)
>>> sorted(set(owners.tolist())), bool(abs(np.bincount(owners) / 10_000 - 1 / 3).max() < 0.02)
([0, 1, 2], True)
>>> owner_ranks(np.array([5], np.uint64), 1).tolist()
[0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from freshrec.dist import _kernels as K
from freshrec.errors import InputError
from freshrec.features.hashing import slot_key
from freshrec.table.table import as_fids

__all__ = ["owner_ranks", "SHARD_SALT"]

#: Mixed into every fid before taking its owner: the :func:`~freshrec.features.hashing.slot_key`
#: of the name below, by the project's one hashing rule.
SHARD_SALT: np.uint64 = slot_key("freshrec.dist.row_hash")


def owner_ranks(fids: Any, world: int) -> npt.NDArray[np.int64]:
    """The rank (``0 .. world - 1``) owning each fid.

    Parameters
    ----------
    fids : array-like of uint64
    world : int
        Number of ranks.

    Returns
    -------
    ndarray of int64
    """
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise InputError(f"owner_ranks: world must be an int >= 1, got {world!r}")
    f = as_fids(fids, "owner_ranks: fids")
    out = np.empty(f.shape[0], np.int64)
    K.owner_ranks(f, SHARD_SALT, world, out)
    return out
