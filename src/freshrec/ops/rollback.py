"""Automatic rollback on the serving side's own AUC.

A :class:`RollbackGuard` is fed the scores the server gave and the clicks that followed
(impressions joined with clicks), each with the event time and the model version that scored
it. Per event-time window of ``rollback.window_s`` it measures the serving AUC; a window
within ``max_auc_drop`` of the reference (the mean of the last three good windows) marks its
version good; ``patience`` consecutive windows below it roll the registry back to the last
good version (:meth:`~freshrec.sync.registry.Registry.rollback`, the reason recorded) and
fire an alert to the sinks.

Examples
--------
>>> import numpy as np, tempfile
>>> from freshrec.ops.config import RollbackConfig
>>> g = RollbackGuard(RollbackConfig(enabled=True, min_examples=100, window_s=60), None)
>>> y = (np.arange(200) % 4 == 0).astype(float)
>>> for w in range(3):   # three good windows of version 1 (perfect ranking)
...     _ = g.observe(60.0 * w, y, y, version=1)
>>> g.reference_auc, g.last_good_version
(1.0, 1)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from freshrec.ops.alerts import Alert, Sink
from freshrec.ops.config import RollbackConfig

if TYPE_CHECKING:
    from freshrec.sync.registry import Registry

__all__ = ["RollbackAction", "RollbackGuard"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollbackAction:
    """A rollback the guard made: from which served version to which, as which registry
    version, and why."""

    served_version: int
    to_version: int
    registry_version: int | None
    reason: str


class RollbackGuard:
    """Watches the serving AUC per window and rolls back; see the module docstring.

    Parameters
    ----------
    config : RollbackConfig
    registry : Registry or None
        Rolled back on a sustained drop (``None``: only judged, as in the doctest).
    sinks : sequence of Sink
        Get an alert for each rollback.
    """

    def __init__(self, config: RollbackConfig, registry: Registry | None,
                 sinks: Sequence[Sink] = ()) -> None:
        self.config = config
        self.registry = registry
        self.sinks = list(sinks)
        self._window: int | None = None
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._versions: dict[int, int] = {}
        self._good: list[float] = []
        self.last_good_version: int | None = None
        self.bad_streak = 0
        #: (window start, AUC, served version, judged good) of each closed window
        self.history: list[tuple[float, float, int, bool | None]] = []
        self.actions: list[RollbackAction] = []

    @property
    def reference_auc(self) -> float | None:
        """Mean AUC of the last three good windows (``None`` before one)."""
        return float(np.mean(self._good[-3:])) if self._good else None

    def observe(self, event_time: float, scores: np.ndarray, labels: np.ndarray, *,
                version: int) -> RollbackAction | None:
        """Add scored examples served by ``version`` at ``event_time``; a window that ends
        is judged (and may roll back, returned)."""
        w = int(event_time // self.config.window_s)
        action = None
        if self._window is not None and w > self._window:
            action = self._close()
        if self._window is None or w > self._window:
            self._window = w
        self._scores.append(np.asarray(scores, dtype=np.float64).reshape(-1))
        self._labels.append(np.asarray(labels, dtype=np.float64).reshape(-1))
        self._versions[version] = self._versions.get(version, 0) + len(self._labels[-1])
        return action

    def _close(self) -> RollbackAction | None:
        from freshrec.train.metrics import AUC

        assert self._window is not None
        y = np.concatenate(self._labels) if self._labels else np.empty(0)
        p = np.concatenate(self._scores) if self._scores else np.empty(0)
        version = max(self._versions, key=lambda v: self._versions[v]) if self._versions else 0
        start = self._window * self.config.window_s
        self._scores, self._labels, self._versions = [], [], {}
        m = AUC()
        m.update(y, p)
        auc = float(m.get())
        if y.size < self.config.min_examples or not math.isfinite(auc):
            self.history.append((start, auc, version, None))
            return None
        ref = self.reference_auc
        bad = ref is not None and ref - auc > self.config.max_auc_drop
        self.history.append((start, auc, version, not bad))
        if not bad:
            self.bad_streak = 0
            self._good.append(auc)
            self.last_good_version = version
            return None
        self.bad_streak += 1
        log.warning("rollback guard: window %g serving AUC %.4f < reference %.4f - %g "
                    "(version %d, %d/%d)", start, auc, ref, self.config.max_auc_drop, version,
                    self.bad_streak, self.config.patience)
        if self.bad_streak < self.config.patience or self.last_good_version is None \
                or self.last_good_version == version:
            return None
        return self._roll_back(version, auc, start)

    def _roll_back(self, version: int, auc: float, start: float) -> RollbackAction:
        assert self.last_good_version is not None and self.reference_auc is not None
        reason = (f"serving AUC {auc:.4f} < reference {self.reference_auc:.4f} - "
                  f"{self.config.max_auc_drop:g} for {self.bad_streak} windows of "
                  f"{self.config.window_s:g} s (version {version})")
        new = None
        if self.registry is not None:
            new = self.registry.rollback(self.last_good_version, reason=reason).version
        action = RollbackAction(version, self.last_good_version, new, reason)
        self.actions.append(action)
        self.bad_streak = 0
        alert = Alert("auto_rollback", "rollback", f"version {version}", auc,
                      f"rolled back to version {self.last_good_version}: {reason}", "critical",
                      start)
        for sink in self.sinks:
            sink.send(alert, "firing")
        return action
