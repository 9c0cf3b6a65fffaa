"""Process-wide settings, applied by the command that owns the process.

Library objects (:class:`~freshrec.train.Trainer`, :class:`~freshrec.serve.Server`) never set
them: one process may hold several of them, or be a test run.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from freshrec.serve.config import ServeConfig
    from freshrec.train.config import TrainConfig

__all__ = ["configure_training", "configure_serving"]


def configure_training(config: TrainConfig) -> None:
    """torch's intra-op threads of a training or evaluating process (``threads``; 0 leaves
    them)."""
    _set_threads(config.threads)


def configure_serving(config: ServeConfig) -> None:
    """torch's intra-op threads and the interpreter's switch interval of a serving process
    (``threads``, ``switch_interval_s``; 0 leaves each as it is)."""
    _set_threads(config.threads)
    if config.switch_interval_s:
        sys.setswitchinterval(config.switch_interval_s)


def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
