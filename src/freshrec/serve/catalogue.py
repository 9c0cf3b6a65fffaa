"""An item catalogue loaded into the feature index, so requests may name candidates by id.

The catalogue is a JSON-lines file, one candidate object per line, in the request's
candidate shape (``{"item_id": 7, "category": 3, ...}``, or features under ``"features"``).
:func:`load_catalogue` encodes every item into a :class:`~freshrec.serve.predictor.FeatureIndex`;
a request with ``"candidate_ids": [7, ...]`` then scores item 7 with those features. A line
that is not a JSON object, lacks ``item_id`` or holds a feature of the wrong type is reported
with the file and line number and skipped; the rest load.

Examples
--------
>>> import tempfile, pathlib
>>> from freshrec.features import feature_config_from_dict
>>> from freshrec.serve.predictor import FeatureIndex, FeatureLayout
>>> fc = feature_config_from_dict({"tables": {"t": {"dim": 2}}, "slots": {
...     "item_id": {"table": "t"}, "i_cat": {"table": "t"}}})
>>> path = pathlib.Path(tempfile.mkdtemp()) / "items.jsonl"
>>> _ = path.write_text('{"item_id": 1, "cat": 3}\\n{"cat": 4}\\n{"item_id": 2, "cat": [1]}\\n')
>>> index = FeatureIndex(FeatureLayout(fc))
>>> stats = load_catalogue(index, path)
>>> stats.loaded, stats.rejected, len(index)
(1, 2, 1)
>>> stats.errors[0]  # doctest: +ELLIPSIS
'.../items.jsonl:2: item_id: missing (each candidate needs one)'
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from freshrec.errors import FieldError, InputError
from freshrec.serve.predictor import FeatureIndex
from freshrec.serve.request import RequestError, candidate

__all__ = ["CatalogueStats", "load_catalogue"]

log = logging.getLogger(__name__)

#: Errors kept in :attr:`CatalogueStats.errors` (all are counted).
MAX_ERRORS = 20


@dataclass
class CatalogueStats:
    """What :func:`load_catalogue` did: items loaded, lines rejected, the first errors."""

    loaded: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def reject(self, where: str, message: str) -> None:
        """Count a bad line and keep (and log) its message."""
        self.rejected += 1
        msg = f"{where}: {message}"
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(msg)
        log.warning("item catalogue: %s", msg)


def load_catalogue(index: FeatureIndex, path: str | os.PathLike[str],
                   chunk: int = 4096) -> CatalogueStats:
    """Encode the items of the JSON-lines file ``path`` into ``index``.

    Raises
    ------
    InputError
        The file cannot be read (the message names it).
    """
    p = Path(path)
    stats = CatalogueStats()
    batch: list[tuple[int, dict[str, Any]]] = []
    try:
        with p.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    batch.append((lineno, candidate(orjson.loads(line), "")))
                except orjson.JSONDecodeError as e:
                    stats.reject(f"{p}:{lineno}", f"not valid JSON ({e})")
                except RequestError as e:
                    stats.reject(f"{p}:{lineno}", str(e))
                if len(batch) >= chunk:
                    _add(index, batch, p, stats)
                    batch = []
    except OSError as e:
        raise InputError(f"item catalogue {p}: cannot read ({e.strerror or e})") from e
    _add(index, batch, p, stats)
    return stats


def _add(index: FeatureIndex, batch: list[tuple[int, dict[str, Any]]], path: Path,
         stats: CatalogueStats) -> None:
    """Store ``batch``; when one item has a bad feature, store the others one by one."""
    if not batch:
        return
    try:
        stats.loaded += index.add([c for _, c in batch])
        return
    except FieldError:
        pass
    for lineno, c in batch:
        try:
            stats.loaded += index.add([c])
        except FieldError as e:  # the index names the field candidates[0].<name>
            stats.reject(f"{path}:{lineno}", f"{e.field.partition('.')[2]}: {e.message}")
