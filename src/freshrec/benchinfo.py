"""Facts about the machine and the code that every benchmark result carries.

Examples
--------
>>> info = machine_info()
>>> sorted(k for k in info if k in ("machine", "cpu_count", "torch_version"))
['cpu_count', 'machine', 'torch_version']
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "timed", "percentiles_ms"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """Machine, library versions and git sha as flat keys."""
    import numba
    import numpy
    import torch

    from freshrec import __version__

    return {
        "machine": f"{platform.machine()} {_cpu_model()}",
        "cpu_count": os.cpu_count(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "numba_version": numba.__version__,
        "freshrec_version": __version__,
        "git_sha": _git_sha(),
    }


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    """Best wall time in seconds of ``repeat`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def percentiles_ms(samples_s: Any, qs: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:
    """Percentiles of latencies given in seconds, in ms, keyed ``p50``, ``p99``, ``p99_9``.

    >>> percentiles_ms([0.001, 0.002, 0.003], qs=(50,))
    {'p50': 2.0}
    """
    import numpy as np

    arr = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {("p" + str(q).replace(".", "_")): float(np.percentile(arr, q)) for q in qs}
