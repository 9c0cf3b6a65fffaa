"""Model analysis: which features a trained model relies on.

:class:`FeatureImportance` scores each sparse slot and dense feature by the gradient of the
logit with respect to the feature's block of the concat (the flat input every model's first
layers read), times the block's variance over examples, per column of the block
(:mod:`freshrec.analysis.importance` has the formula). ``freshrec analyze importance``
runs it on a checkpoint and a data set.

- :mod:`~freshrec.analysis.online`: the same score during training, sampled steps, per
  event-time window (``metrics.jsonl`` records, Prometheus gauges);
- :mod:`~freshrec.analysis.permutation`: permutation importance and rank correlation;
- :mod:`~freshrec.analysis.groundtruth`: the simulator's features of known effect, joined;
- :mod:`~freshrec.analysis.cost` and :mod:`~freshrec.analysis.select`: what a feature costs
  and a selection under a memory or latency budget (``freshrec analyze select``).

Warm start with changed features is :mod:`freshrec.train.warm`.
"""

from freshrec.analysis.importance import (
    FeatureBlock,
    FeatureImportance,
    concat_blocks,
    concat_gradient,
    trainer_importance,
)

__all__ = ["FeatureBlock", "FeatureImportance", "concat_blocks", "concat_gradient",
           "trainer_importance"]
