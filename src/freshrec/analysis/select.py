"""Feature selection by importance and cost (the SmartNews write-up, 3.1.2).

A feature's *value* is its importance per unit of cost: importance averaged over windows
(:func:`averaged_importance`: the last ``windows`` windows of a run's ``metrics.jsonl``;
SmartNews averages a month of daily scores) divided by its cost under the budget's kind
(:class:`~freshrec.analysis.cost.FeatureCost`: table bytes, or lookup microseconds per
example). :func:`select_features` removes features from the lowest value up until the kept
ones fit the budget; a feature that costs nothing under the budget is never removed.
:func:`proposed_document` writes the config without them (tables no slot uses dropped).

Examples
--------
>>> from freshrec.analysis.cost import FeatureCost
>>> costs = {n: FeatureCost(name=n, kind="slot", memory_bytes=m, lookup_us=1.0, length=1.0)
...          for n, m in [("a", 100), ("b", 100), ("c", 400)]}
>>> sel = select_features({"a": 2.0, "b": 1.0, "c": 3.0}, costs, budget=500, kind="memory")
>>> sel.removed, sel.kept_cost   # c is the most important but the least per byte
(('c',), 200.0)
>>> parse_budget("64KiB"), parse_budget("2.5us"), parse_budget("1ms")
((65536.0, 'memory'), (2.5, 'latency'), (1000.0, 'latency'))
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshrec.analysis.cost import Budget, FeatureCost
from freshrec.errors import InputError

__all__ = ["Selection", "averaged_importance", "parse_budget", "proposed_document",
           "select_features"]

_UNITS: dict[str, tuple[float, Budget]] = {
    "b": (1, "memory"), "kb": (1e3, "memory"), "mb": (1e6, "memory"), "gb": (1e9, "memory"),
    "kib": (2**10, "memory"), "mib": (2**20, "memory"), "gib": (2**30, "memory"),
    "us": (1, "latency"), "ms": (1e3, "latency"),
}


def parse_budget(text: str) -> tuple[float, Budget]:
    """``"64MiB"``, ``"500kB"`` (memory, in bytes) or ``"3us"``, ``"0.1ms"`` (lookup time per
    example, in microseconds) -> ``(amount, kind)``.

    Raises
    ------
    InputError
        Not a number with one of the units B, kB, MB, GB, KiB, MiB, GiB, us, ms.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]+)\s*", text)
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if m is None or unit is None:
        raise InputError(f"budget: expected a number and a unit (B, kB, MB, GB, KiB, MiB, GiB "
                         f"for memory; us, ms for lookup time per example), got {text!r}")
    return float(m.group(1)) * unit[0], unit[1]


def averaged_importance(metrics_jsonl: str | Path, windows: int | None = None
                        ) -> dict[str, float]:
    """Each feature's importance averaged over the last ``windows`` windows (``None``: all)
    of the ``{"kind": "importance"}`` records of a ``metrics.jsonl``; the last record of a
    ``(window, slot)`` counts (a resumed run writes a window again).

    Raises
    ------
    InputError
        The file is missing or has no importance record, or ``windows`` < 1.
    """
    if windows is not None and windows < 1:
        raise InputError(f"averaged_importance: windows must be >= 1, got {windows}")
    latest: dict[tuple[int, str], float] = {}
    if not Path(metrics_jsonl).is_file():
        raise InputError(f"{metrics_jsonl}: no such file (a run's metrics.jsonl)")
    with open(metrics_jsonl) as fh:
        for i, line in enumerate(fh, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{metrics_jsonl}:{i}: not a JSON line ({e})") from e
            if isinstance(rec, dict) and rec.get("kind") == "importance":
                latest[(int(rec["window"]), str(rec["slot"]))] = float(rec["importance"])
    if not latest:
        raise InputError(f"{metrics_jsonl}: no importance records (train with "
                         "train.importance_rate > 0)")
    starts = sorted({w for w, _ in latest})
    keep = set(starts if windows is None else starts[-windows:])
    sums: dict[str, list[float]] = {}
    for (w, name), v in latest.items():
        if w in keep and math.isfinite(v):
            sums.setdefault(name, []).append(v)
    return {n: sum(v) / len(v) for n, v in sums.items()}


@dataclass(frozen=True, kw_only=True)
class Selection:
    """What :func:`select_features` proposes.

    Parameters
    ----------
    kind : {"memory", "latency"}
    budget, total_cost, kept_cost : float
        The budget and the cost of all features and of the kept ones (bytes or us).
    ranking : list of dict
        Every feature from the highest value down: ``name``, ``kind``, ``importance``,
        ``cost``, ``value`` (importance per unit of cost, ``inf`` for a free feature) and
        ``keep``.
    removed : tuple of str
        The features removed, lowest value first.
    """

    kind: Budget
    budget: float
    total_cost: float
    kept_cost: float
    ranking: list[dict[str, Any]]
    removed: tuple[str, ...]

    @property
    def kept(self) -> tuple[str, ...]:
        """The features kept, in ranking order."""
        return tuple(r["name"] for r in self.ranking if r["keep"])


def select_features(importance: Mapping[str, float], costs: Mapping[str, FeatureCost], *,
                    budget: float, kind: Budget) -> Selection:
    """Remove the features of lowest importance per unit of cost until the rest fit
    ``budget`` (module docstring).

    Raises
    ------
    InputError
        A feature has a cost but no importance; the free features alone exceed the budget.
    """
    unknown = sorted(set(costs) - set(importance))
    if unknown:
        raise InputError(f"select_features: no importance for {unknown}")

    def value(name: str) -> float:
        c = costs[name].cost(kind)
        return importance[name] / c if c > 0 else math.inf

    order = sorted(costs, key=value)
    total = sum(costs[n].cost(kind) for n in costs)
    kept_cost, removed = total, []
    for name in order:
        if kept_cost <= budget:
            break
        if costs[name].cost(kind) > 0:
            removed.append(name)
            kept_cost -= costs[name].cost(kind)
    if kept_cost > budget:
        raise InputError(f"select_features: no selection fits {budget:g} ({kind})")
    ranking = [{"name": n, "kind": costs[n].kind, "importance": importance[n],
                "cost": costs[n].cost(kind), "value": value(n), "keep": n not in removed}
               for n in reversed(order)]
    return Selection(kind=kind, budget=budget, total_cost=total, kept_cost=kept_cost,
                     ranking=ranking, removed=tuple(removed))


def proposed_document(raw: Mapping[str, Any], removed: set[str] | tuple[str, ...]
                      ) -> dict[str, Any]:
    """A copy of config document ``raw`` without the slots and dense features ``removed``,
    and without the tables no remaining slot uses.

    >>> doc = {"features": {"tables": {"t": {"dim": 4}, "u": {"dim": 4}},
    ...        "slots": {"a": {"table": "t"}, "b": {"table": "u"}}, "dense": {"x": {}}}}
    >>> proposed_document(doc, {"b", "x"})["features"]
    {'tables': {'t': {'dim': 4}}, 'slots': {'a': {'table': 't'}}, 'dense': {}}
    """
    doc = copy.deepcopy(dict(raw))
    features = doc["features"]
    for key in ("slots", "dense"):
        if key in features:
            features[key] = {k: v for k, v in features[key].items() if k not in removed}
    used = {s["table"] for s in features.get("slots", {}).values()}
    features["tables"] = {k: v for k, v in features.get("tables", {}).items() if k in used}
    return doc
