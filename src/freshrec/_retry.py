"""Exponential back-off, shared by every stage that retries a lost connection or a write.

Examples
--------
>>> b = Backoff(first_s=0.05, cap_s=0.3)
>>> [b.next() for _ in range(5)]
[0.05, 0.1, 0.2, 0.3, 0.3]
>>> b.reset()
>>> b.next()
0.05
"""

from __future__ import annotations

from freshrec._validate import is_number, require

__all__ = ["Backoff"]


class Backoff:
    """Delays between retries: ``first_s``, then doubling, at most ``cap_s``.

    Parameters
    ----------
    first_s : float
        The first delay (> 0).
    cap_s : float
        The longest delay (>= ``first_s``).
    """

    def __init__(self, *, first_s: float = 0.05, cap_s: float = 5.0) -> None:
        require(is_number(first_s) and first_s > 0, "Backoff", "first_s", "a number > 0",
                first_s)
        require(is_number(cap_s) and cap_s >= first_s, "Backoff", "cap_s",
                f"a number >= first_s ({first_s})", cap_s)
        self.first_s = first_s
        self.cap_s = cap_s
        self._delay = 0.0

    def next(self) -> float:
        """The delay before the next retry (each call doubles it, up to ``cap_s``)."""
        self._delay = min(max(2 * self._delay, self.first_s), self.cap_s)
        return self._delay

    def reset(self) -> None:
        """After a success: the next failure waits ``first_s`` again."""
        self._delay = 0.0
