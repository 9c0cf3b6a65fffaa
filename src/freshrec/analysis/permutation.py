"""Permutation importance: how much a model's AUC drops when one feature is shuffled.

The reference that :mod:`freshrec.analysis.importance` is checked against: for each slot
and dense feature, the feature's source column of an evaluation table is permuted across
its rows (the other columns kept), the table is scored again, and the importance is
``AUC(data) - AUC(data with the column shuffled)``. It needs one scoring pass per feature
(the gradient method needs one pass in all), and it measures what the model does with the
feature, not how a first-order expansion explains the logit.

:func:`rank_correlation` (Spearman's rho, ties averaged) compares two scorings.

Examples
--------
>>> rank_correlation({"a": 3.0, "b": 1.0, "c": 2.0}, {"a": 30.0, "b": 5.0, "c": 6.0})
1.0
>>> rank_correlation([1, 2, 3, 4], [4, 3, 2, 1])
-1.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from freshrec.errors import InputError

if TYPE_CHECKING:
    from freshrec.train.trainer import Trainer

__all__ = ["PermutationImportance", "permutation_importance", "rank_correlation",
           "score_auc"]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of ``x``, tied values sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def rank_correlation(a: Mapping[str, float] | Sequence[float],
                     b: Mapping[str, float] | Sequence[float]) -> float:
    """Spearman's rank correlation of two scorings (mappings over the same names, or
    sequences of one length); ``nan`` when either is constant.

    Raises
    ------
    InputError
        The names or lengths differ, or fewer than two values.
    """
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            raise InputError("rank_correlation: both scorings must name the same features")
        names = sorted(a)
        xa = np.array([a[n] for n in names], np.float64)
        xb = np.array([b[n] for n in names], np.float64)
    else:
        xa, xb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if xa.shape != xb.shape or xa.ndim != 1 or len(xa) < 2:
        raise InputError(f"rank_correlation: two scorings of >= 2 values of the same length "
                         f"are needed, got {len(xa)} and {len(xb)}")
    ra, rb = _ranks(xa), _ranks(xb)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denom) if denom else math.nan


def score_auc(trainer: Trainer, table: pa.Table) -> float:
    """AUC of ``trainer``'s predictions on ``table`` (its first label; no training)."""
    from freshrec.train.metrics import AUC
    from freshrec.train.trainer import rebatch

    auc = AUC()
    for rb in rebatch(table.to_batches(), trainer.config.train.batch_size):
        enc = trainer.schema.encode(rb)
        auc.update(enc.labels[:, 0], trainer.predict_batch(enc))
    return float(auc.get())


@dataclass(frozen=True, kw_only=True)
class PermutationImportance:
    """What :func:`permutation_importance` measured.

    Parameters
    ----------
    base_auc : float
        AUC on the data as it is.
    drops : dict
        ``{feature: base_auc - AUC with its column shuffled}`` (mean over repeats).
    seconds : float
        Wall time of the whole computation (every scoring pass).
    """

    base_auc: float
    drops: dict[str, float]
    seconds: float


def permutation_importance(trainer: Trainer, table: pa.Table, *, repeats: int = 1,
                           seed: int = 0) -> PermutationImportance:
    """The AUC drop of every slot and dense feature of ``trainer``'s model on ``table``
    (raw columns, as the trainer reads them) when its source column is shuffled.

    Two features that read one column are shuffled together. The model is only read.

    Raises
    ------
    InputError
        ``table`` lacks a feature's column, or ``repeats`` < 1.
    """
    if repeats < 1:
        raise InputError(f"permutation_importance: repeats must be >= 1, got {repeats}")
    fc = trainer.config.features
    columns = {s.name: s.column for s in fc.slots} | {d.name: d.column for d in fc.dense}
    missing = sorted({c for c in columns.values() if c not in table.column_names})
    if missing:
        raise InputError(f"permutation_importance: the data has no column {missing} "
                         f"(columns: {table.column_names})")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    base = score_auc(trainer, table)
    drops: dict[str, float] = {}
    for name, column in columns.items():
        i = table.column_names.index(column)
        aucs = []
        for _ in range(repeats):
            perm = pa.array(rng.permutation(table.num_rows))
            shuffled = table.set_column(i, column, table.column(i).take(perm))
            aucs.append(score_auc(trainer, shuffled))
        drops[name] = base - float(np.mean(aucs))
    return PermutationImportance(base_auc=base, drops=drops, seconds=time.perf_counter() - t0)
