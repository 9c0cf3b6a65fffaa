"""Facts about the machine and the code that every benchmark result carries.

Examples
--------
>>> info = machine_info()
>>> sorted(k for k in info if k in ("machine", "cpu_count", "torch_version"))
['cpu_count', 'machine', 'torch_version']
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["machine_info", "timed", "percentiles_ms", "t95", "paired_interval", "load_script",
           "alternating_children", "extract_src"]


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


#: two-sided 95 % t quantiles by degrees of freedom (between two keys: the next one up)
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}


def t95(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (1.96 past 30).

    >>> t95(2), t95(11), t95(100)
    (4.3, 2.18, 1.96)
    """
    return next((v for k, v in sorted(_T95.items()) if k >= df), 1.96)


def paired_interval(diffs: Any) -> tuple[float, float]:
    """Mean of paired differences and the half-width of its 95 % t interval (nan under 2).

    >>> mean, half = paired_interval([0.1, 0.2, 0.3])
    >>> round(mean, 3), round(half, 3)
    (0.2, 0.248)
    """
    import numpy as np

    d = np.asarray(diffs, float)
    if len(d) < 2:
        return float(d.mean()), float("nan")
    return float(d.mean()), float(t95(len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))


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


def alternating_children(commands: Mapping[str, Sequence[str]], pairs: int, *,
                         envs: Mapping[str, Mapping[str, str]] | None = None,
                         rotate: bool = False, timeout_s: float = 1800,
                         log: Callable[[str], None] | None = None) -> dict[str, list[Any]]:
    """Run every named command once per pair, ``pairs`` times, each run a fresh process, so
    that all settings see the same minutes of a noisy machine; returns per name the JSON of
    each run's last line of output. ``envs``: the environment of a name's runs (default:
    this one's); ``rotate``: each name first in turn (else in the given order); ``log``:
    called with a line per run.

    >>> got = alternating_children({"a": [sys.executable, "-c", "print(1)"],
    ...                             "b": [sys.executable, "-c", "print([2])"]}, 2, rotate=True)
    >>> got
    {'a': [1, 1], 'b': [[2], [2]]}
    """
    runs: dict[str, list[Any]] = {name: [] for name in commands}
    names = list(commands)
    for k in range(pairs):
        for name in names[k % len(names):] + names[:k % len(names)] if rotate else names:
            env = None if envs is None or name not in envs else dict(envs[name])
            out = subprocess.run(list(commands[name]), env=env, capture_output=True,
                                 text=True, timeout=timeout_s)
            if out.returncode != 0:
                raise RuntimeError(f"{name} run failed: {out.stderr[-1500:]}")
            runs[name].append(json.loads(out.stdout.splitlines()[-1]))
            if log is not None:
                log(f"pair {k + 1}/{pairs} {name}: {runs[name][-1]}")
    return runs


def extract_src(commit: str, into: str | os.PathLike[str]) -> str:
    """``src/`` of the repository's ``commit`` (``git archive``) under ``into``; returns the
    directory to put first on a process's ``PYTHONPATH`` to run that commit's package (the
    benchmarks' same-run baselines). Raises :class:`RuntimeError` naming the commit when git
    or the commit is missing.

    >>> import tempfile
    >>> Path(extract_src("HEAD", tempfile.mkdtemp()), "freshrec", "__init__.py").is_file()
    True
    """
    import tarfile
    from io import BytesIO

    here = Path(__file__).parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, check=True,
                             capture_output=True, text=True, timeout=30).stdout.strip()
        tar = subprocess.run(["git", "archive", commit, "src"], cwd=top,
                             capture_output=True, check=True, timeout=60).stdout
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"cannot read src/ of commit {commit!r} from git: "
                           f"{e.stderr.strip()!r}") from e
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot read src/ of commit {commit!r} from git: {e}") from e
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return os.path.join(into, "src")


def percentiles_ms(samples_s: Any, qs: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:
    """Percentiles of latencies given in seconds, in ms, keyed ``p50``, ``p99``, ``p99_9``.

    >>> percentiles_ms([0.001, 0.002, 0.003], qs=(50,))
    {'p50': 2.0}
    """
    import numpy as np

    arr = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {("p" + str(q).replace(".", "_")): float(np.percentile(arr, q)) for q in qs}


def load_script(path: str | os.PathLike[str], name: str) -> ModuleType:
    """The Python file at ``path`` (a benchmark script, not a package module) as module ``name``.

    Loaded once: a second call with the same ``name`` returns the module already loaded. The
    module is in ``sys.modules`` while it runs, as dataclasses and pickling need.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = (Path(d) / "helper.py").write_text("ANSWER = 42")
    >>> load_script(Path(d) / "helper.py", "doc_helper").ANSWER
    42
    >>> load_script("/nowhere.py", "doc_helper") is sys.modules["doc_helper"]
    True
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a Python script from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
