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

from typing import TYPE_CHECKING, Any

from freshrec._lazy import lazy_attribute
from freshrec.train.config import TrainConfig

if TYPE_CHECKING:
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

#: Public name -> the module that defines it, imported on first use: reading a config
#: (``freshrec.config`` takes this package's section from here) does not load torch.
_LAZY = {"AUC": "metrics", "Calibration": "metrics", "LogLoss": "metrics", "Metric": "metrics",
         "MetricSet": "metrics", "Windowed": "metrics", "default_metrics": "metrics",
         "OnlineTrainer": "online", "Trainer": "trainer", "rebatch": "trainer",
         "WarmStartReport": "warm", "warm_start": "warm"}

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


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
