"""Per-window statistics of the examples a trainer sees, for the dashboard and alerts.

:class:`SlotStats` counts, per slot, the examples that carry at least one id (coverage) and
the distinct ids, over one reporting window; :func:`window_record` turns it, the tables'
counters and the metrics into the ``{"kind": "window", ...}`` line that the online trainer
appends to ``metrics.jsonl``.

Examples
--------
>>> from freshrec.features.jagged import JaggedBatch
>>> s = SlotStats(["a", "b"])
>>> s.update(JaggedBatch.from_dict({"a": [[1], [2], [1]], "b": [[], [5, 6], []]}))
>>> s.get()
{'a': {'coverage': 1.0, 'distinct': 2}, 'b': {'coverage': 0.3333, 'distinct': 2}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from freshrec.features.jagged import JaggedBatch

__all__ = ["SlotStats", "window_record"]


class SlotStats:
    """Coverage and distinct ids per slot since the last :meth:`reset`.

    Parameters
    ----------
    slots : sequence of str
        The slots to count (others in a batch are ignored).
    """

    def __init__(self, slots: Sequence[str]) -> None:
        self.slots = list(slots)
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.examples = 0
        self.positives = 0.0
        self._with = dict.fromkeys(self.slots, 0)
        self._ids: dict[str, list[np.ndarray]] = {s: [] for s in self.slots}

    def update(self, batch: JaggedBatch, labels: np.ndarray | None = None) -> None:
        """Count one batch of ids (and, given, the sum of its labels)."""
        self.examples += batch.batch_size
        if labels is not None:
            self.positives += float(np.sum(labels))
        for s in self.slots:
            if s not in batch.keys:
                continue
            values, offsets = batch.slot(s)
            self._with[s] += int(np.count_nonzero(np.diff(offsets)))
            if values.size:
                self._ids[s].append(np.unique(values))

    @property
    def positive_ratio(self) -> float | None:
        """Mean label of the window's examples (``None`` before any)."""
        return round(self.positives / self.examples, 6) if self.examples else None

    def get(self) -> dict[str, dict[str, Any]]:
        """``{slot: {"coverage": share of examples with an id, "distinct": ids}}``."""
        out = {}
        for s in self.slots:
            ids = self._ids[s]
            distinct = int(np.unique(np.concatenate(ids)).size) if ids else 0
            cov = self._with[s] / self.examples if self.examples else math.nan
            out[s] = {"coverage": round(cov, 4) if self.examples else None, "distinct": distinct}
        return out


def window_record(*, event_time: int, wall_s: float, step: int, examples: int,
                  examples_per_s: float | None, metrics: Mapping[str, float],
                  slots: Mapping[str, Any], tables: Mapping[str, Any],
                  positive_ratio: float | None = None) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of one reporting window (NaN metrics as ``None``).

    >>> window_record(event_time=60, wall_s=1.5, step=3, examples=30, examples_per_s=None,
    ...               metrics={"auc": float("nan")}, slots={}, tables={})["auc"] is None
    True
    """
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in metrics.items()}
    return {"kind": "window", "event_time": int(event_time), "wall_unix_s": round(wall_s, 3),
            "step": step, "examples": examples, "examples_per_s": examples_per_s,
            "positive_ratio": positive_ratio, **clean,
            "slots": dict(slots), "tables": dict(tables)}
