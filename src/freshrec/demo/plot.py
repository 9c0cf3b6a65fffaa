"""The demo's plot: AUC, request latency and freshness over the run, as a PNG (needs
matplotlib, the ``experiments`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot"]


def plot(samples: list[dict[str, Any]], path: Path) -> bool:
    """AUC, latency and freshness over time as a PNG; ``False`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if s[key] is None else float(s[key]) for s in samples])

    t = col("t_s")
    fig, ax = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax[0].plot(t, col("online_auc"), label="online AUC (trainer, progressive)")
    ax[0].plot(t, col("serving_auc_10s"), label="serving AUC (scores vs clicks, last 10 s)")
    ax[0].axhline(0.5, color="grey", lw=0.8, ls=":")
    ax[0].set_ylabel("AUC")
    ax[0].legend(loc="lower right", fontsize=8)
    ax[1].plot(t, col("latency_p50_ms"), label="p50")
    ax[1].plot(t, col("latency_p99_ms"), label="p99")
    ax[1].set_ylabel("request latency (ms)")
    ax[1].legend(loc="upper right", fontsize=8)
    ax[2].plot(t, col("freshness_s"), label="freshness of the served model")
    ax[2].set_ylabel("seconds")
    ax[2].set_xlabel("seconds since traffic started")
    ax[2].legend(loc="upper right", fontsize=8)
    fig.suptitle("freshrec demo")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
