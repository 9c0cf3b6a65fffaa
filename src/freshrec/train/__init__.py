"""Training: batch and online trainers and the metrics that follow them.

:class:`Trainer` trains a model over batches (one pass or epochs, with exact-resume
checkpoints); :class:`OnlineTrainer` drives one from the examples log, checkpointing with the
log offsets and publishing to the registry.

Metrics are incremental objects (``update(y_true, y_pred, weight=None)``, ``get()``, a
readable repr such as ``AUC: 0.7512``) shared by the trainer, the joiner, serving and the
dashboard. Progressive evaluation scores each batch before training on it, so the running
AUC/log loss are honest out-of-sample numbers; :class:`Windowed` keeps one over the last
window of event time.

Examples
--------
>>> import numpy as np
>>> from freshrec.train import AUC, OnlineTrainer, Trainer
>>> auc = AUC()
>>> auc.update(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]))
>>> auc
AUC: 1.0000
"""

from freshrec.train.config import TrainConfig
from freshrec.train.metrics import (
    AUC,
    Calibration,
    LogLoss,
    Metric,
    MetricSet,
    Windowed,
    default_metrics,
)
from freshrec.train.online import OnlineTrainer
from freshrec.train.trainer import Trainer, rebatch
from freshrec.train.warm import WarmStartReport, warm_start

__all__ = [
    "AUC",
    "Calibration",
    "LogLoss",
    "Metric",
    "MetricSet",
    "Windowed",
    "default_metrics",
    "Trainer",
    "OnlineTrainer",
    "TrainConfig",
    "rebatch",
    "WarmStartReport",
    "warm_start",
]
