"""Warm start: a trainer with changed features starts from an older model's checkpoint.

Feature experiments add, remove or reorder slots and dense features; training each variant
from zero costs months of data. A warm start (the SmartNews write-up, 3.2) keeps what
carries over:

- **tables**: a table of the new config that the checkpoint has is loaded; a new table stays
  fresh (new slots on it start from the initializer); a checkpoint table the new config no
  longer names is dropped. A table whose dim changed is refused.
- **dense parameters**: those of the same name and shape are loaded. Those that read the
  concat ``[e_1, ..., e_F, d_1, ..., d_K]`` (:meth:`CTRModel.concat_axes
  <freshrec.models.base.CTRModel.concat_axes>`: the first fully connected layer, DCN-v2's
  cross layers) keep each kept feature's weights, moved to the feature's new columns; the
  columns of new features are zero, so a new feature changes no output until it is trained.
- the optimizer state, step, data position and progressive metrics start fresh.

The checkpoint does not store its config, so the caller passes the ``previous`` one (its
fingerprint is checked against the checkpoint's). A change of model kind, of a slot's
embedding dim, or of any other layer's shape (the MLP widths) is refused.

Examples
--------
>>> from freshrec.config import config_from_dict
>>> def doc(dense):
...     return config_from_dict({"features": {
...         "tables": {"ids": {"dim": 2}}, "slots": {"item": {"table": "ids"}},
...         "dense": {d: {"norm": "none"} for d in dense}, "labels": ["click"]},
...         "model": {"kind": "wide_deep", "mlp": [4]}}, where="doc")
>>> import tempfile
>>> old = Trainer(doc(["a", "b"]), run_dir=tempfile.mkdtemp())
>>> ckpt = old.save()
>>> report = warm_start(Trainer(doc(["b", "c"])), ckpt, previous=old.config)
>>> report.repositioned, report.initialised
(('deep.0.weight', 'wide.weight'), ('c',))
>>> report.dropped
('a',)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from freshrec.analysis.importance import FeatureBlock, concat_blocks
from freshrec.errors import ConfigError
from freshrec.models.base import CTRModel
from freshrec.train.checkpoint import latest_checkpoint, load_checkpoint
from freshrec.train.trainer import Trainer

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["REPORT_FILE", "WarmStartReport", "warm_start", "warm_start_run"]

#: Where :func:`warm_start_run` saves the report, in the new run's directory.
REPORT_FILE = "warm_start.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WarmStartReport:
    """What :func:`warm_start` did; every field is sorted names.

    Parameters
    ----------
    tables_loaded, tables_fresh, tables_dropped : tuple of str
        Tables loaded from the checkpoint, left fresh (new), and in the checkpoint only.
    loaded : tuple of str
        Dense parameters copied unchanged.
    repositioned : tuple of str
        Dense parameters that read the concat, their kept features' weights moved.
    initialised : tuple of str
        New slots and dense features (their concat columns are zero).
    dropped : tuple of str
        Slots and dense features of the checkpoint that the new config removed.
    """

    tables_loaded: tuple[str, ...]
    tables_fresh: tuple[str, ...]
    tables_dropped: tuple[str, ...]
    loaded: tuple[str, ...]
    repositioned: tuple[str, ...]
    initialised: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_dict(self) -> dict[str, list[str]]:
        """The report as JSON-able lists."""
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    def describe(self) -> str:
        """One line per field that is not empty, e.g. ``initialised: c``."""
        return "\n".join(f"{k}: {', '.join(v)}" for k, v in self.to_dict().items() if v)


def _blocks(config: FreshrecConfig) -> list[FeatureBlock]:
    fc = config.features
    dims = {t.name: t.dim for t in fc.tables}
    dim = dims[fc.slots[0].table] if fc.slots else 0
    return concat_blocks([s.name for s in fc.slots], dim, [d.name for d in fc.dense])


def _check_compatible(new: FreshrecConfig, previous: FreshrecConfig) -> None:
    if new.model.kind != previous.model.kind:
        raise ConfigError(f"warm_start: the checkpoint's model is {previous.model.kind.value!r}, "
                          f"this config's is {new.model.kind.value!r}; a warm start keeps "
                          "the model kind")
    old_dims = {t.name: t.dim for t in previous.features.tables}
    for t in new.features.tables:
        if t.name in old_dims and old_dims[t.name] != t.dim:
            raise ConfigError(f"warm_start: table {t.name!r} has dim {old_dims[t.name]} in the "
                              f"checkpoint and {t.dim} in this config; a warm start keeps "
                              "embedding dims (rename the table to start it fresh)")


def _column_map(new: list[FeatureBlock], old: list[FeatureBlock]) -> torch.Tensor:
    """For each new concat column, its old column, or -1 for a new feature's."""
    width = max((b.stop for b in new), default=0)
    src = torch.full((width,), -1, dtype=torch.long)
    by_name = {b.name: b for b in old}
    for b in new:
        o = by_name.get(b.name)
        if o is not None and o.kind == b.kind:
            src[b.start:b.stop] = torch.arange(o.start, o.stop)
    return src


def _reposition(old: torch.Tensor, shape: torch.Size, axes: tuple[int, ...],
                src: torch.Tensor) -> torch.Tensor:
    """``old`` moved to the new columns along ``axes`` (zero where ``src`` is -1)."""
    kept = torch.nonzero(src >= 0).squeeze(1)
    out = old
    for axis in axes:
        moved = torch.zeros(*out.shape[:axis], len(src), *out.shape[axis + 1:], dtype=old.dtype)
        out = moved.index_copy(axis, kept, out.index_select(axis, src[kept]))
    if out.shape != shape:
        raise ConfigError(f"warm_start: re-positioned shape {tuple(out.shape)} does not match "
                          f"{tuple(shape)}")
    return out


def _dense_state(model: CTRModel, old_state: dict[str, torch.Tensor], src: torch.Tensor
                 ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    axes = model.concat_axes()
    state, loaded, repositioned = {}, [], []
    for name, current in model.state_dict().items():
        if name not in old_state:
            raise ConfigError(f"warm_start: the checkpoint has no parameter {name!r} (the "
                              "model's layers changed; a warm start keeps them)")
        if name in axes:
            state[name] = _reposition(old_state[name], current.shape, axes[name], src)
            repositioned.append(name)
        elif old_state[name].shape != current.shape:
            raise ConfigError(f"warm_start: parameter {name!r} has shape "
                              f"{tuple(old_state[name].shape)} in the checkpoint and "
                              f"{tuple(current.shape)} here (the model's layers changed; a "
                              "warm start keeps them)")
        else:
            state[name] = old_state[name]
            loaded.append(name)
    return state, loaded, repositioned


def warm_start(trainer: Trainer, checkpoint: str | Path,
               previous: FreshrecConfig) -> WarmStartReport:
    """Start ``trainer`` from ``checkpoint``, written by a trainer of config ``previous``.

    See the module docstring for what is kept, moved, initialised and dropped.

    Raises
    ------
    ConfigError
        No checkpoint at ``checkpoint``; a changed model kind, embedding dim or layer shape.
    IncompatibleFormatError
        The checkpoint was not written with ``previous``.
    """
    ckpt = latest_checkpoint(checkpoint)
    if ckpt is None:
        raise ConfigError(f"warm_start: no checkpoint found at {str(checkpoint)!r}")
    new = trainer.config
    _check_compatible(new, previous)
    old_tables = {t.name for t in previous.features.tables}
    keep = {n: t for n, t in trainer.tables.items() if n in old_tables}
    old_state, _, _ = load_checkpoint(ckpt, keep, previous.fingerprint())
    new_blocks, old_blocks = _blocks(new), _blocks(previous)
    state, loaded, repositioned = _dense_state(trainer.model, old_state,
                                               _column_map(new_blocks, old_blocks))
    trainer.model.load_state_dict(state)
    new_names, old_names = {b.name for b in new_blocks}, {b.name for b in old_blocks}
    report = WarmStartReport(
        tables_loaded=tuple(sorted(keep)),
        tables_fresh=tuple(sorted(set(trainer.tables) - old_tables)),
        tables_dropped=tuple(sorted(old_tables - set(trainer.tables))),
        loaded=tuple(sorted(loaded)), repositioned=tuple(sorted(repositioned)),
        initialised=tuple(sorted(new_names - old_names)),
        dropped=tuple(sorted(old_names - new_names)))
    log.info("warm_start checkpoint=%s %s", ckpt, report)
    return report


def warm_start_run(trainer: Trainer, checkpoint: str | Path,
                   previous_config: str | Path | None = None) -> WarmStartReport:
    """:func:`warm_start` from files, as ``freshrec train --warm-start`` does: the previous
    model's config document is read from ``previous_config`` (``None``: the trainer's own
    config, the features unchanged), and the report is saved as JSON to
    ``run_dir/warm_start.json`` when the trainer has a run directory.

    Raises
    ------
    ConfigError
        As :func:`warm_start`, or ``previous_config`` cannot be read.
    """
    from freshrec.config import load_config

    previous = trainer.config if previous_config is None else load_config(previous_config)
    report = warm_start(trainer, checkpoint, previous)
    if trainer.run_dir is not None:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        (trainer.run_dir / REPORT_FILE).write_text(
            json.dumps({"checkpoint": str(checkpoint), **report.to_dict()}, indent=1) + "\n")
    return report
