"""Zeroed arrays for a table's rows: cache-line aligned, on transparent huge pages if asked.

A table's rows are read at random, so two things decide what a row costs:

* **Alignment.** numpy's large arrays start 16 bytes into a page (the allocator's header),
  so every 64-byte embedding row (dim 16) straddles two cache lines. Arrays from here start
  on a page boundary (anonymous ``mmap``) or, when small, on a 64-byte boundary.
* **Huge pages.** At 4 KiB pages a random row over hundreds of MB is also a TLB miss;
  ``madvise(MADV_HUGEPAGE)`` lets Linux back the array with 2 MiB pages where transparent
  huge pages are set to ``madvise`` or ``always`` (elsewhere the advice is ignored). Only
  arrays of at least :data:`HUGE_PAGE` bytes are advised.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import Any

import numpy as np

__all__ = ["HUGE_PAGE", "aligned_zeros"]

HUGE_PAGE = 2 << 20
"""Bytes in a huge page (x86-64); smaller arrays are not advised."""

_LINE = 64


def aligned_zeros(shape: tuple[int, ...], dtype: Any, *, huge_pages: bool = True) -> np.ndarray:
    """A zeroed C-contiguous array starting on a 64-byte (large: page) boundary.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype
    huge_pages : bool
        Advise the kernel to back an array of at least :data:`HUGE_PAGE` bytes with huge
        pages (Linux; ignored where unsupported).

    Examples
    --------
    >>> a = aligned_zeros((1000, 16), np.float32)
    >>> a.ctypes.data % 64, a.shape, float(a.sum()), a.flags.writeable
    (0, (1000, 16), 0.0, True)
    """
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dt.itemsize
    if nbytes < HUGE_PAGE:
        raw = np.zeros(nbytes + _LINE, np.uint8)
        start = -raw.ctypes.data % _LINE
        return raw[start : start + nbytes].view(dt).reshape(shape)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # a kernel without transparent huge pages
            buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dt, count).reshape(shape)
