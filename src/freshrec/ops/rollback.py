"""Automatic rollback on the serving side's own AUC.

A :class:`RollbackGuard` is fed the scores the server gave and the clicks that followed
(impressions joined with clicks), each with the event time and the model version that scored
it. Per event-time window of ``rollback.window_s`` it measures the serving AUC; a window
within ``max_auc_drop`` of the reference (the mean of the last three good windows) marks its
version good; ``patience`` consecutive windows of one version below it roll the registry
back to the last good version (:meth:`~freshrec.sync.registry.Registry.rollback`, the reason recorded) and
fire an alert to the sinks. Windows served mostly by a version that was rolled back (by this
guard, or before it started: the registry's rollback versions say which) are recorded but not
judged, so the impressions the server scored before it loaded the restored version do not
roll back again.

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

import base64
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from freshrec.errors import FreshrecError
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
        self._streak_version: int | None = None
        #: (window start, AUC, served version, judged good) of each closed window
        self.history: list[tuple[float, float, int, bool | None]] = []
        self.actions: list[RollbackAction] = []
        #: versions rolled back from (their windows are not judged)
        self.rolled_back: set[int] = set()
        if registry is not None:
            self._load_rollbacks(registry)

    def _load_rollbacks(self, registry: Registry) -> None:
        """The versions that the registry's rollback versions undid."""
        from freshrec.sync.registry import DAMAGE_ERRORS, VersionKind

        for v in registry.versions():
            try:
                m = registry.manifest(v)
            except DAMAGE_ERRORS:
                continue
            if m.kind is VersionKind.ROLLBACK and m.rolled_back_from is not None \
                    and m.base is not None:
                self.rolled_back.update(range(m.base + 1, m.rolled_back_from + 1))

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
        if y.size < self.config.min_examples or not math.isfinite(auc) \
                or version in self.rolled_back:
            self._closed(start, auc, version, None, y.size)
            return None
        ref = self.reference_auc
        bad = ref is not None and ref - auc > self.config.max_auc_drop
        self._closed(start, auc, version, not bad, y.size)
        if not bad:
            self.bad_streak = 0
            self._good.append(auc)
            self.last_good_version = version
            return None
        # patience counts the bad windows of one version: a new version starts afresh
        self.bad_streak = self.bad_streak + 1 if version == self._streak_version else 1
        self._streak_version = version
        log.warning("rollback guard: window %g serving AUC %.4f < reference %.4f - %g "
                    "(version %d, %d/%d)", start, auc, ref, self.config.max_auc_drop, version,
                    self.bad_streak, self.config.patience)
        if self.bad_streak < self.config.patience or self.last_good_version is None \
                or self.last_good_version == version:
            return None
        return self._roll_back(version, auc, start)

    def state(self) -> dict[str, Any]:
        """What a restarted guard needs to judge on as if it had not stopped (JSON-able):
        the open window's examples, the good windows, the streak, the history and actions.

        >>> from freshrec.ops.config import RollbackConfig
        >>> g = RollbackGuard(RollbackConfig(enabled=True, min_examples=1), None)
        >>> _ = g.observe(5.0, np.array([0.2, 0.7]), np.array([0.0, 1.0]), version=2)
        >>> h = RollbackGuard(RollbackConfig(enabled=True, min_examples=1), None)
        >>> h.restore(json.loads(json.dumps(g.state())))
        >>> h.observe(65.0, np.array([0.1]), np.array([1.0]), version=2) is None, h.history
        (True, [(0.0, 1.0, 2, True)])
        """
        return {"window_s": self.config.window_s, "window": self._window,
                "scores": _pack(self._scores), "labels": _pack(self._labels),
                "versions": [[v, n] for v, n in self._versions.items()],
                "good": self._good, "last_good_version": self.last_good_version,
                "bad_streak": self.bad_streak, "streak_version": self._streak_version,
                "history": [list(h) for h in self.history],
                "actions": [asdict(a) for a in self.actions],
                "rolled_back": sorted(self.rolled_back)}

    def restore(self, state: dict[str, Any]) -> None:
        """Take up :meth:`state` (the versions rolled back so far are added to those the
        registry says were); raises ``KeyError``/``TypeError``/``ValueError`` on a state
        that is not one, and ``ValueError`` when it was measured on other windows."""
        if float(state["window_s"]) != self.config.window_s:
            raise ValueError(f"its windows are of {state['window_s']} s, the config's "
                             f"rollback.window_s is {self.config.window_s:g}")
        self._window = None if state["window"] is None else int(state["window"])
        self._scores, self._labels = [_unpack(state["scores"])], [_unpack(state["labels"])]
        if self._scores[0].size != self._labels[0].size:
            raise ValueError("scores and labels of the open window differ in length")
        self._versions = {int(v): int(n) for v, n in state["versions"]}
        self._good = [float(a) for a in state["good"]]
        self.last_good_version = _opt_int(state["last_good_version"])
        self.bad_streak = int(state["bad_streak"])
        self._streak_version = _opt_int(state["streak_version"])
        self.history = [(float(s), float(a), int(v), None if g is None else bool(g))
                        for s, a, v, g in state["history"]]
        self.actions = [RollbackAction(**a) for a in state["actions"]]
        self.rolled_back.update(int(v) for v in state["rolled_back"])

    def _closed(self, start: float, auc: float, version: int, good: bool | None,
                n: int) -> None:
        self.history.append((start, auc, version, good))
        log.info("serving window %s", json.dumps({
            "start": start, "auc": round(auc, 6) if math.isfinite(auc) else None,
            "version": version, "examples": n, "good": good}))

    def _roll_back(self, version: int, auc: float, start: float) -> RollbackAction:
        assert self.last_good_version is not None and self.reference_auc is not None
        reason = (f"serving AUC {auc:.4f} < reference {self.reference_auc:.4f} - "
                  f"{self.config.max_auc_drop:g} for {self.bad_streak} windows of "
                  f"{self.config.window_s:g} s (version {version})")
        new = None
        if self.registry is not None:
            try:
                new = self.registry.rollback(self.last_good_version, reason=reason).version
            except (FreshrecError, OSError) as e:  # the watcher goes on; the alert says so
                log.exception("rollback guard: rollback to version %d failed",
                              self.last_good_version)
                reason += f"; the rollback failed: {e}"
        action = RollbackAction(version, self.last_good_version, new, reason)
        self.actions.append(action)
        self.rolled_back.update(range(self.last_good_version + 1, version + 1))
        self.bad_streak = 0
        alert = Alert("auto_rollback", "rollback", f"version {version}", auc,
                      f"rolled back to version {self.last_good_version}: {reason}", "critical",
                      start)
        for sink in self.sinks:
            sink.send(alert, "firing")
        return action


def _pack(parts: list[np.ndarray]) -> str:
    """float64 arrays as one base64 string (exact, and far smaller than a JSON list)."""
    data = np.concatenate(parts) if parts else np.empty(0)
    return base64.b64encode(data.astype("<f8").tobytes()).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True),
                         dtype="<f8").astype(np.float64)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)
