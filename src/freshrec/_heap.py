"""Keep freed memory in the process heap instead of handing it back to the kernel.

A joiner allocates and frees the same few hundred MiB over and over: decoded record chunks,
candidate columns, Arrow output batches. With glibc's defaults every block over the dynamic
mmap threshold (128 KiB up to 32 MiB) is a fresh ``mmap`` and every free above the trim
threshold returns pages, so each batch faults its pages in again: on this project's 2-vCPU
VM a 35-candidate join took 35,000 page faults per 420,000 examples and its system time
varied from 0.1 to 1.2 s for the same work (``docs/stream.md``, round 6).
:func:`retain_freed_heap` raises both thresholds with ``mallopt``, so the heap grows once to
its working set and then reuses it; the process's resident size stays at its peak (at most
``trim_threshold`` bytes of it free) rather than shrinking between batches.

Examples
--------
>>> import platform
>>> retain_freed_heap() == (platform.libc_ver()[0] == "glibc")
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD", "retain_freed_heap"]

#: blocks below this many bytes come from the heap, not from a ``mmap`` of their own
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap is returned to the kernel only above this many bytes
TRIM_THRESHOLD = 256 << 20
#: extra bytes requested whenever the heap grows (fewer, larger ``brk`` calls)
TOP_PAD = 16 << 20

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


def retain_freed_heap(mmap_threshold: int = MMAP_THRESHOLD,
                      trim_threshold: int = TRIM_THRESHOLD, top_pad: int = TOP_PAD) -> bool:
    """Set glibc's allocator to keep freed memory (see the module docstring) for the whole
    process; True when applied, False where the C library is not glibc (nothing changes)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad)))
