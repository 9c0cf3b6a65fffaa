"""The publish gate: a candidate model is scored on a held-back slice of the most recent
examples before it is published, and refused when its AUC fell too far below the serving
version's or its calibration left the allowed range.

The online trainer holds back ``holdout_fraction`` of the examples it reads (a fixed hash of
each row's position in the stream picks them; they are never trained on) and keeps the newest
``holdout_examples`` of them. Before a publish, :meth:`PublishGate.check` scores them with the
candidate. The reference is the higher of the serving version's AUC, as its own gate check
measured it when it was published (``meta["gate"]["auc"]`` in the registry; after a
rollback, the restored version's), and the median AUC of the last ``reference_publishes``
accepted checks (so that a slow slide of small steps, each within ``max_auc_drop`` of the
version before, is still refused). No second model is kept in memory. A refusal is recorded in the registry's
events with its reason, and the candidate keeps training; the rows it touched are published
with the next accepted version.

Examples
--------
>>> import numpy as np
>>> from freshrec.ops.config import GateConfig
>>> gate = PublishGate(GateConfig(enabled=True, min_examples=4))
>>> gate.hold(np.array([0, 1, 2, 3]), np.array([0.0, 1.0, 0.0, 1.0]))  # rows, labels
>>> def good(rows): return np.array([0.2, 0.8, 0.1, 0.7])[rows]
>>> gate.check(good, reference_auc=0.9).accepted
True
>>> def broken(rows): return np.array([0.8, 0.2, 0.7, 0.1])[rows]
>>> d = gate.check(broken, reference_auc=0.9)
>>> d.accepted, d.reason  # the reference: max(0.9, median of accepted checks: 1.0)
(False, 'holdout AUC 0.0000 < serving 1.0000 - 0.02')
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from freshrec.ops.config import GateConfig

__all__ = ["GateDecision", "PublishGate", "holdout_mask"]


def holdout_mask(first_row: int, n: int, fraction: float, *, seed: int = 0) -> np.ndarray:
    """Which of the rows ``first_row .. first_row + n - 1`` of a stream are held back: a
    fixed hash of the row's position (the same rows after a restart).

    >>> int(holdout_mask(0, 10_000, 0.1).sum())
    978
    """
    from freshrec.train._kernels import row_coins

    coins = row_coins(np.uint64(seed), np.int64(first_row), int(n), np.uint64(0x6A7E))
    return np.asarray(coins < fraction)


@dataclass(frozen=True)
class GateDecision:
    """The outcome of one check: accepted or not, why, and the measures behind it."""

    accepted: bool
    reason: str
    auc: float
    calibration: float
    reference_auc: float | None
    examples: int

    def meta(self) -> dict[str, Any]:
        """JSON-able form (NaN as ``None``), published with the version it accepted."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


class PublishGate:
    """Holds back recent examples and judges candidates on them; see the module docstring.

    Parameters
    ----------
    config : GateConfig
    """

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self._held: deque[tuple[Any, np.ndarray]] = deque()
        self._accepted: deque[float] = deque(maxlen=config.reference_publishes)
        self._n = 0
        #: checks made, and refused
        self.checks = 0
        self.refusals = 0

    @property
    def examples(self) -> int:
        """Held-back examples kept now."""
        return self._n

    def hold(self, batch: Any, labels: np.ndarray) -> None:
        """Keep a batch of held-back examples (anything the scoring function of
        :meth:`check` takes) with its labels; the oldest go past ``holdout_examples``."""
        labels = np.asarray(labels, dtype=np.float64).reshape(-1)
        if labels.size == 0:
            return
        self._held.append((batch, labels))
        self._n += labels.size
        while self._held and self._n - self._held[0][1].size >= self.config.holdout_examples:
            self._n -= self._held.popleft()[1].size

    def held(self) -> list[tuple[Any, np.ndarray]]:
        """The kept batches with their labels, oldest first."""
        return list(self._held)

    def check(self, predict: Callable[[Any], np.ndarray], *,
              reference_auc: float | None) -> GateDecision:
        """Score the held-back examples with ``predict`` (one call per kept batch) and decide
        (:meth:`judge`).

        ``reference_auc``: the serving version's holdout AUC (``None``: none known); the
        median of the recent accepted checks also counts (see the module docstring). With
        neither, only the calibration range applies."""
        if self._n < self.config.min_examples:
            return self.judge(np.empty(0), np.empty(0), reference_auc=reference_auc,
                              examples=self._n)
        scores = [np.asarray(predict(batch), dtype=np.float64).reshape(-1)
                  for batch, _ in self._held]
        return self.judge(np.concatenate([y for _, y in self._held]), np.concatenate(scores),
                          reference_auc=reference_auc)

    def judge(self, labels: np.ndarray, scores: np.ndarray, *, reference_auc: float | None,
              examples: int | None = None) -> GateDecision:
        """Decide on the held-back ``labels`` and the candidate's ``scores`` of them (e.g.
        those of every rank of a distributed run: the decision is the same whoever scored
        them). ``examples`` (default: the labels') below ``min_examples``: accepted, not
        judged."""
        from freshrec.train.metrics import AUC

        c = self.config
        self.checks += 1
        n = int(labels.size) if examples is None else int(examples)
        if n < c.min_examples:
            return GateDecision(True, f"holdout has {n} < {c.min_examples} examples: not judged",
                                math.nan, math.nan, reference_auc, n)
        if not np.isfinite(scores).all():  # a diverged model: refused, not scored
            self.refusals += 1
            bad = int((~np.isfinite(scores)).sum())
            return GateDecision(False, f"candidate scores are NaN or infinite for {bad} of "
                                       f"{scores.size} held-back examples", math.nan, math.nan,
                                reference_auc, n)
        auc = AUC()
        auc.update(labels, scores)
        a = float(auc.get())
        label_sum = float(labels.sum())
        cal = float(scores.sum()) / label_sum if label_sum > 0 else math.nan
        refs = [r for r in (reference_auc, float(np.median(self._accepted))
                            if self._accepted else None) if r is not None and math.isfinite(r)]
        reference_auc = max(refs) if refs else None
        problems = []
        if reference_auc is not None and math.isfinite(a) and a < reference_auc - c.max_auc_drop:
            problems.append(f"holdout AUC {a:.4f} < serving {reference_auc:.4f} - "
                            f"{c.max_auc_drop:g}")
        if math.isfinite(cal) and not c.calibration_low <= cal <= c.calibration_high:
            problems.append(f"calibration {cal:.3f} outside [{c.calibration_low:g}, "
                            f"{c.calibration_high:g}]")
        if problems:
            self.refusals += 1
            return GateDecision(False, "; ".join(problems), a, cal, reference_auc, n)
        if math.isfinite(a):
            self._accepted.append(a)
        return GateDecision(True, "ok", a, cal, reference_auc, n)
