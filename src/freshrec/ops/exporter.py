"""The newest value of each collected series as Prometheus text: what ``freshrec dashboard``
serves on ``/metrics`` so that a Prometheus server can scrape the trainer's quality, the
slots' coverage and the joiner's lag (the names the generated rules and Grafana panels use).

Examples
--------
>>> print(prometheus_text({"series": {"online.auc_window": [[1, 0.7], [2, 0.71]],
...                                   "slot.item_id.coverage": [[2, 0.5]]}}))
# TYPE freshrec_online_metric gauge
freshrec_online_metric{metric="auc_window"} 0.71
# TYPE freshrec_slot_coverage gauge
freshrec_slot_coverage{slot="item_id"} 0.5
<BLANKLINE>
"""

from __future__ import annotations

from typing import Any

__all__ = ["prometheus_text"]

#: series key prefix -> (metric name, label name or None)
_NAMES: dict[str, tuple[str, str | None]] = {
    "online": ("freshrec_online_metric", "metric"),
    "registry.version": ("freshrec_registry_head_version", None),
    "registry.auc": ("freshrec_registry_metric", "metric"),
    "join.lag_s": ("freshrec_joiner_lag_seconds", None),
    "join.quarantined": ("freshrec_joiner_quarantined_records", None),
    "serve.auc": ("freshrec_serving_auc", None),
}


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _name(key: str) -> tuple[str, dict[str, str]] | None:
    """The metric name and labels of series ``key`` (``None``: not exported)."""
    if key in _NAMES:
        name, label = _NAMES[key]
        return name, ({label: key.split(".")[-1]} if label else {})
    head, _, rest = key.partition(".")
    if head == "online":
        return "freshrec_online_metric", {"metric": rest}
    if head in ("slot", "table"):
        owner, _, what = rest.rpartition(".")
        if head == "slot":
            names = {"coverage": "freshrec_slot_coverage",
                     "distinct": "freshrec_slot_distinct_ids",
                     "importance": "freshrec_feature_importance"}
            return (names[what], {"slot": owner}) if what in names else None
        return f"freshrec_table_{what}", {"table": owner}
    return None


def prometheus_text(data: dict[str, Any]) -> str:
    """Gauges of the newest point of every exported series in ``data["series"]``."""
    by_name: dict[str, list[str]] = {}
    for key in sorted(data["series"]):
        pts = data["series"][key]
        named = _name(key)
        if not pts or named is None:
            continue
        name, labels = named
        lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        by_name.setdefault(name, []).append(f"{name}{{{lab}}} {pts[-1][1]}" if lab
                                            else f"{name} {pts[-1][1]}")
    out = []
    for name, lines in by_name.items():
        out += [f"# TYPE {name} gauge", *lines]
    return "\n".join(out) + "\n"
