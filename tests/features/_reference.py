"""Plain-Python reference of the fid rule (:mod:`freshrec.features.hashing`), written from its
documentation: the kernels and both encoding paths are compared against it."""

from __future__ import annotations

import re

MASK = (1 << 64) - 1
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)", re.ASCII)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def mix64(x: int) -> int:
    x &= MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def slot_key(slot: str) -> int:
    return mix64(fnv1a64(slot.encode("utf-8")))


def decimal(value: str | bytes) -> int | None:
    """The integer ``value`` is the canonical decimal form of, in [-2**63, 2**64); else None."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not _DECIMAL.fullmatch(text) or text == "-0":
        return None
    n = int(text)
    return n if -(1 << 63) <= n < (1 << 64) else None


def value_hash(value: int | bool | float | str | bytes) -> int:
    if isinstance(value, float):
        value = round(value)
    if isinstance(value, str | bytes):
        n = decimal(value)
        if n is None:
            return fnv1a64(value.encode("utf-8") if isinstance(value, str) else value)
        value = n
    return mix64(int(value) & MASK)


def fid(slot: str, value: int | bool | float | str | bytes) -> int:
    """The fid of ``value`` in ``slot``, by the documented rule."""
    return mix64(slot_key(slot) ^ value_hash(value))
