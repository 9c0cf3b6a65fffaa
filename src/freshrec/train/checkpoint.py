"""Training checkpoints: tables, dense parameters, optimizer state and data position, together.

Layout of a run directory::

    run/
      checkpoints/
        step-00001200/
          tables/<name>/...        one table snapshot each (see EmbeddingTable.save)
          dense/...                dense parameters and optimizer state (.npy + manifest)
          metrics/...              progressive metrics' state (.npy + manifest)
          state.json               step, data position, metric values, config fingerprint
        LATEST                     name of the newest complete checkpoint (atomic)

A checkpoint is written to a temporary directory and renamed into place before ``LATEST`` is
updated, so a crash at any moment leaves the previous checkpoint loadable. No pickle: the
optimizer's state dict and the metrics' state (:meth:`MetricSet.state`) are stored as named
arrays plus JSON, in bundles with a format name and version.

Examples
--------
>>> import tempfile, torch
>>> net = torch.nn.Linear(2, 1)
>>> opt = torch.optim.Adam(net.parameters())
>>> net(torch.ones(1, 2)).sum().backward(); opt.step()
>>> arrays, meta = dense_state_to_arrays(net.state_dict(), opt.state_dict())
>>> sd, osd = dense_state_from_arrays(arrays, meta)
>>> torch.equal(sd["weight"], net.weight.detach()), int(osd["state"][0]["step"])
(True, 1)
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshrec._io import atomic_write_bytes, read_bundle, write_bundle
from freshrec.errors import IncompatibleFormatError, SnapshotCorruptError
from freshrec.table.table import EmbeddingTable
from freshrec.train.metrics import MetricSet

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "dense_state_to_arrays",
    "dense_state_from_arrays",
    "load_metrics",
]

log = logging.getLogger(__name__)

DENSE_FORMAT = "freshrec.dense"
DENSE_VERSION = 1
METRICS_FORMAT = "freshrec.metrics"
METRICS_VERSION = 1
LATEST = "LATEST"


def dense_state_to_arrays(
    state_dict: Mapping[str, torch.Tensor], optim_state: Mapping[str, Any] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Flatten a module state dict (and optimizer state dict) into arrays + JSON metadata."""
    arrays: dict[str, np.ndarray] = {}
    params = []
    for name, t in state_dict.items():
        arrays[f"p.{name}"] = t.detach().cpu().numpy()
        params.append(name)
    meta: dict[str, Any] = {"params": params}
    if optim_state is not None:
        scalars: dict[str, dict[str, Any]] = {}
        tensors: dict[str, list[str]] = {}
        for idx, st in optim_state["state"].items():
            for key, v in st.items():
                if torch.is_tensor(v):
                    arrays[f"o.{idx}.{key}"] = v.detach().cpu().numpy()
                    tensors.setdefault(str(idx), []).append(key)
                else:
                    scalars.setdefault(str(idx), {})[key] = v
        meta["optim"] = {"param_groups": optim_state["param_groups"], "scalars": scalars,
                         "tensors": tensors}
    return arrays, meta


def dense_state_from_arrays(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Inverse of :func:`dense_state_to_arrays`."""
    sd = {name: torch.from_numpy(np.array(arrays[f"p.{name}"])) for name in meta["params"]}
    if "optim" not in meta:
        return sd, None
    om = meta["optim"]
    state: dict[int, dict[str, Any]] = {}
    for idx, keys in om["tensors"].items():
        for key in keys:
            state.setdefault(int(idx), {})[key] = torch.from_numpy(
                np.array(arrays[f"o.{idx}.{key}"]))
    for idx, sc in om["scalars"].items():
        state.setdefault(int(idx), {}).update(sc)
    return sd, {"state": state, "param_groups": om["param_groups"]}


def _pack(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """1-d arrays concatenated into one array per dtype (a few files to write and fsync, not
    one per array), and the index ``name -> [dtype, start, stop]`` that :func:`_unpack` reads.
    """
    parts: dict[str, list[np.ndarray]] = {}
    index: dict[str, Any] = {}
    for name, a in arrays.items():
        pool = parts.setdefault(a.dtype.name, [])
        start = sum(p.size for p in pool)
        pool.append(a.reshape(-1))
        index[name] = [a.dtype.name, start, start + a.size]
    return {dt: np.concatenate(pool) for dt, pool in parts.items()}, index


def _unpack(pools: Mapping[str, np.ndarray], index: Any, where: Path) -> dict[str, np.ndarray]:
    """Inverse of :func:`_pack`."""
    try:
        return {name: pools[dt][int(start):int(stop)]
                for name, (dt, start, stop) in index.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise SnapshotCorruptError(f"{where}: bad array index ({type(e).__name__}: {e})") from e


def save_checkpoint(
    root: str | Path,
    name: str,
    tables: Mapping[str, EmbeddingTable],
    model_state: Mapping[str, torch.Tensor],
    optim_state: Mapping[str, Any] | None,
    state: Mapping[str, Any],
    keep: int = 2,
    metrics: MetricSet | None = None,
) -> Path:
    """Write checkpoint ``root/name`` atomically, point ``LATEST`` at it, keep the newest ``keep``.

    ``metrics``: progressive metrics whose state is saved with the rest (see
    :func:`load_metrics`).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    for tname, table in tables.items():
        table.save(tmp / "tables" / tname)
    arrays, meta = dense_state_to_arrays(model_state, optim_state)
    write_bundle(tmp / "dense", DENSE_FORMAT, DENSE_VERSION, arrays, meta)
    if metrics is not None:
        m_arrays, m_meta = metrics.state()
        pools, index = _pack(m_arrays)
        write_bundle(tmp / "metrics", METRICS_FORMAT, METRICS_VERSION, pools,
                     {**m_meta, "index": index})
    atomic_write_bytes(tmp / "state.json", json.dumps(dict(state), indent=1).encode())
    final = root / name
    # a kill at any point leaves a complete checkpoint: a same-named one is renamed aside
    # (never deleted in place), and old ones are renamed before they are deleted
    if final.exists():
        final.rename(root / f".{name}.old-{uuid.uuid4().hex[:8]}")
    tmp.rename(final)
    atomic_write_bytes(root / LATEST, name.encode())
    done = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in done[:-keep]:
        _delete(old)
    for stale in root.glob(".*.*-*"):
        if stale.is_dir() and _ASIDE.fullmatch(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    log.info("checkpoint=%s", final)
    return final


#: a checkpoint being written (tmp), replaced (old) or deleted (del)
_ASIDE = re.compile(r"\.(.+)\.(tmp|old|del)-[0-9a-f]{8}")


def _delete(path: Path) -> None:
    """Delete a checkpoint directory: renamed aside first, so a kill never leaves half of
    one under its own name."""
    aside = path.with_name(f".{path.name}.del-{uuid.uuid4().hex[:8]}")
    path.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _complete(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dense").is_dir()


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if (root / "state.json").is_file():
        return root
    ptr = root / LATEST
    if not ptr.is_file():
        return None
    path = root / ptr.read_text().strip()
    if _complete(path):
        return path
    # killed while replacing it: the previous copy was renamed aside; else the newest
    # complete one
    for aside in sorted(root.glob(f".{path.name}.old-*"), reverse=True):
        if _complete(aside) and not path.exists():
            aside.rename(path)
            log.warning("checkpoint %s: restored the copy a killed save had set aside", path)
            return path
    done = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and _complete(p)), reverse=True)
    if not done:
        raise SnapshotCorruptError(f"{ptr}: points at {path.name!r}, which is not a "
                                   f"checkpoint, and no complete checkpoint is left in {root}")
    log.warning("checkpoint %s is incomplete; resuming from %s", path, done[0])
    return done[0]


def load_checkpoint(
    path: str | Path, tables: Mapping[str, EmbeddingTable], fingerprint: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """Load tables in place; return ``(model_state, optim_state, state)``.

    Raises :class:`IncompatibleFormatError` when the checkpoint was written for another
    features/model config (``fingerprint``) or lacks a table.
    """
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if fingerprint is not None and state.get("config_fingerprint") != fingerprint:
        raise IncompatibleFormatError(
            f"{path}: checkpoint was written for config {state.get('config_fingerprint')}, "
            f"this config is {fingerprint} (features or model changed)"
        )
    for tname, table in tables.items():
        tdir = path / "tables" / tname
        if not tdir.is_dir():
            raise IncompatibleFormatError(f"{path}: checkpoint has no table {tname!r}")
        table.load(tdir)
    meta, arrays = read_bundle(path / "dense", DENSE_FORMAT, DENSE_VERSION)
    model_state, optim_state = dense_state_from_arrays(arrays, meta)
    return model_state, optim_state, state


def load_metrics(path: str | Path, metrics: MetricSet) -> bool:
    """Restore ``metrics`` in place from checkpoint ``path``; whether it was restored.

    A checkpoint without metrics (written by an older version) or with other metrics (a
    changed ``train.metrics_window_s``, another format version) leaves ``metrics`` unchanged
    and logs a warning: progressive metrics then restart, the rest of the checkpoint is good.

    Raises :class:`SnapshotCorruptError` when the metrics' files fail their checksums.

    Examples
    --------
    >>> import tempfile
    >>> from freshrec.train.metrics import default_metrics
    >>> ms = default_metrics()
    >>> ms.update(np.array([0, 1]), np.array([0.3, 0.6]))
    >>> ckpt = save_checkpoint(tempfile.mkdtemp(), "step-1", {}, {}, None, {}, metrics=ms)
    >>> restored = default_metrics()
    >>> load_metrics(ckpt, restored), restored.get() == ms.get()
    (True, True)
    >>> load_metrics(ckpt, default_metrics(window_s=60))  # other metrics: not restored
    False
    """
    path = Path(path) / "metrics"
    if not path.is_dir():
        log.warning("checkpoint=%s has no metrics: progressive metrics restart", path.parent)
        return False
    try:
        meta, pools = read_bundle(path, METRICS_FORMAT, METRICS_VERSION)
        metrics.load_state(_unpack(pools, meta.get("index"), path), meta)
    except IncompatibleFormatError as e:
        log.warning("checkpoint=%s: progressive metrics restart (%s)", path.parent, e)
        return False
    return True
