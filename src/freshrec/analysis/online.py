"""Feature importance while a model trains: sampled batches, running estimates per window.

A :class:`~freshrec.train.trainer.Trainer` with ``train.importance_rate > 0`` owns an
:class:`OnlineImportance`. On a sampled step (one in ``1 / rate``, evenly spaced) it takes
the pooled embeddings the training forward just computed (a forward hook on the embedding
module keeps a reference, no copy), and between that forward and the backward computes the
logit's gradient at the concat (:func:`~freshrec.analysis.importance.interact_gradient`:
one more forward and backward of the dense part, in eval mode; no table lookup, no
parameter gradient, no random draw, so training is unchanged). The gradient and the concat
feed a :class:`~freshrec.analysis.importance.FeatureImportance` of the event-time window
(``train.importance_window_s``) the batch belongs to.

A window closes when a sampled batch of a later window arrives; its scores become records
(one per feature) that :meth:`OnlineImportance.write` appends to ``metrics.jsonl``, and the
current window's running scores are exported as Prometheus gauges to ``importance.prom``
(``docs/analysis.md`` has both shapes). The estimates are not checkpointed: a resumed run
starts the open window again.

Examples
--------
>>> from freshrec.analysis.importance import concat_blocks
>>> imp = OnlineImportance(concat_blocks([], dim=1, dense_names=["a"]), rate=0.25,
...                        window_s=10)
>>> [s for s in range(8) if imp.due(s)]
[3, 7]
>>> imp.add(torch.tensor([[0.0], [2.0]]), torch.ones(2, 1), now=15, step=3)
>>> imp.add(torch.tensor([[0.0], [4.0]]), torch.ones(2, 1), now=21, step=7)  # closes [10, 20)
>>> [(r["window"], r["slot"], r["importance"], r["final"]) for r in imp.pending]
[(10, 'a', 1.0, True)]
>>> imp.current()
(20, {'a': 4.0})
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from freshrec.analysis.importance import (
    FeatureBlock,
    FeatureImportance,
    concat_blocks,
    interact_gradient,
)
from freshrec.errors import InputError

if TYPE_CHECKING:
    from freshrec.models.base import CTRModel
    from freshrec.train.trainer import Trainer

__all__ = ["OnlineImportance", "PROM_FILE", "importance_records"]

#: The Prometheus text file :meth:`OnlineImportance.write` keeps in the run directory.
PROM_FILE = "importance.prom"


class OnlineImportance:
    """Running gradient-times-variance importance per event-time window.

    Parameters
    ----------
    blocks : sequence of FeatureBlock
        The features of the model's concat (:func:`concat_blocks`).
    rate : float
        Share of training steps scored, in (0, 1]; the steps are evenly spaced.
    window_s : int
        Event-time seconds per window.
    """

    def __init__(self, blocks: Sequence[FeatureBlock], *, rate: float, window_s: int) -> None:
        if not 0 < rate <= 1:
            raise InputError(f"OnlineImportance: rate must be in (0, 1], got {rate!r}")
        if window_s < 1:
            raise InputError(f"OnlineImportance: window_s must be >= 1, got {window_s!r}")
        self.blocks = list(blocks)
        self.rate = float(rate)
        self.window_s = int(window_s)
        self._window: int | None = None
        self._imp = FeatureImportance(self.blocks)
        #: Records of closed windows not yet written (see ``docs/analysis.md``).
        self.pending: list[dict[str, Any]] = []
        self._emb: torch.Tensor | None = None
        self._changed = False
        #: Wall seconds spent scoring sampled batches (the cost of the estimates).
        self.seconds = 0.0

    @classmethod
    def for_trainer(cls, trainer: Trainer) -> OnlineImportance | None:
        """The estimator of a trainer's config, hooked to its embedding module (``None``
        when ``train.importance_rate`` is 0)."""
        tc = trainer.config.train
        if not tc.importance_rate:
            return None
        blocks = concat_blocks(trainer.schema.slot_names, trainer.model.dim,
                               [d.name for d in trainer.config.features.dense])
        imp = cls(blocks, rate=tc.importance_rate, window_s=tc.importance_window_s)
        trainer.embedding.register_forward_hook(imp._keep_output)
        return imp

    def _keep_output(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        self._emb = output

    def due(self, step: int) -> bool:
        """Whether the step that starts at count ``step`` is scored."""
        return math.floor((step + 1) * self.rate) > math.floor(step * self.rate)

    def after_forward(self, model: CTRModel, dense: np.ndarray, now: int, step: int) -> None:
        """Score the batch whose training forward just ran, if step ``step`` is sampled.

        ``dense`` is the batch's dense input; the pooled embeddings are those the forward
        hook kept. Call it between the forward and the backward.
        """
        if not self.due(step) or self._emb is None:
            return
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            x, grad = interact_gradient(model, self._emb, torch.from_numpy(dense))
        finally:
            model.train(was_training)
        self.add(x, grad, now=now, step=step)
        self.seconds += time.perf_counter() - t0

    def add(self, x: torch.Tensor, grad: torch.Tensor, *, now: int, step: int) -> None:
        """Add a scored batch at event time ``now``; a later window closes the open one."""
        window = now // self.window_s * self.window_s
        if self._window is None:
            self._window = window
        elif window > self._window:
            self._close(step, final=True)
            self._window = window
        self._imp.add(x, grad)
        self._changed = True
        self._emb = None

    def _close(self, step: int, *, final: bool) -> None:
        if self._window is not None and self._imp.examples:
            self.pending += importance_records(self._imp, window=self._window,
                                               window_s=self.window_s, step=step, final=final)
        self._imp = FeatureImportance(self.blocks)

    def current(self) -> tuple[int | None, dict[str, float]]:
        """The open window's start and its running scores (``nan`` before any example)."""
        return self._window, self._imp.get()

    def finish(self, step: int) -> None:
        """The run stops: the open window's scores become records (``final: false``)."""
        self._close(step, final=False)
        self._window = None

    def prometheus(self) -> str:
        """The current window's scores as Prometheus gauges (text format)."""
        from freshrec.serve.metrics import sample

        window, scores = self.current()
        lines = ["# HELP freshrec_feature_importance gradient x variance at the concat, "
                 "running estimate of the current window",
                 "# TYPE freshrec_feature_importance gauge"]
        lines += [f'freshrec_feature_importance{{slot="{b.name}",kind="{b.kind}"}} '
                  f"{sample(scores[b.name])}" for b in self.blocks]
        lines += ["# HELP freshrec_feature_importance_window_start_seconds event-time start "
                  "of the window of freshrec_feature_importance",
                  "# TYPE freshrec_feature_importance_window_start_seconds gauge",
                  "freshrec_feature_importance_window_start_seconds "
                  f"{sample(math.nan if window is None else float(window))}"]
        return "\n".join(lines) + "\n"

    def write(self, run_dir: str | Path) -> None:
        """Append the pending records to ``run_dir/metrics.jsonl`` and rewrite
        ``run_dir/importance.prom`` (atomically) if a batch was scored since the last call."""
        run_dir = Path(run_dir)
        if self.pending:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in self.pending)
            self.pending = []
        if self._changed:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = run_dir / f".{PROM_FILE}.tmp"
            tmp.write_text(self.prometheus())
            os.replace(tmp, run_dir / PROM_FILE)
            self._changed = False


def importance_records(imp: FeatureImportance, *, window: int, window_s: int, step: int,
                       final: bool) -> list[dict[str, Any]]:
    """One ``{"kind": "importance", ...}`` record per feature of ``imp`` (block order).

    Examples
    --------
    >>> imp = FeatureImportance(concat_blocks(["s"], dim=1, dense_names=[]))
    >>> imp.add(torch.tensor([[0.0], [2.0]]), torch.ones(2, 1))
    >>> importance_records(imp, window=0, window_s=60, step=5, final=True)[0]["importance"]
    1.0
    """
    scores = imp.get()
    return [{"kind": "importance", "window": window, "window_s": window_s, "slot": b.name,
             "feature_kind": b.kind, "importance": scores[b.name], "examples": imp.examples,
             "step": step, "final": final} for b in imp.blocks]
