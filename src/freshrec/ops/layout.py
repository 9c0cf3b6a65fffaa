"""The dashboard's panels, generated from the model config.

One row of panels per feature slot (coverage, distinct ids per window, its table's size,
admissions and expiries, and its importance over time), and rows of model panels (online
AUC, log loss and calibration, throughput, freshness, registry and served versions, serving
latency, QPS and AUC, the joiner). The HTML page, the Grafana dashboard and the Prometheus rules
are all drawn from this one list, so a slot added to the config gets its panels everywhere
with no code change.

Each series has a ``key`` (what :class:`~freshrec.ops.collect.Collector` fills for the page)
and a PromQL ``expr`` over the metrics that ``freshrec serve`` and ``freshrec dashboard``
export (what Grafana plots).

Examples
--------
>>> from freshrec.config import config_from_dict
>>> cfg = config_from_dict({"features": {"tables": {"item": {"dim": 4}},
...                                      "slots": {"item_id": {"table": "item"}}},
...                         "model": {"kind": "deepfm", "mlp": [8]}})
>>> [r.title for r in dashboard_layout(cfg)]
['Online quality', 'Throughput and freshness', 'Serving', 'Registry and joiner', 'slot item_id']
>>> [p.id for p in dashboard_layout(cfg)[-1].panels]
['slot-item_id-coverage', 'slot-item_id-distinct', 'slot-item_id-table', 'slot-item_id-importance']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["Panel", "Row", "Series", "dashboard_layout", "slot_id"]


@dataclass(frozen=True)
class Series:
    """One line of a panel: ``key`` of the page's data, ``expr`` for Prometheus/Grafana."""

    name: str
    key: str
    expr: str


@dataclass(frozen=True)
class Panel:
    """One chart: a stable ``id`` (the page's element id), a title, a unit and its lines."""

    id: str
    title: str
    unit: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class Row:
    """A titled row of panels; ``slot`` is the feature slot of a per-slot row."""

    title: str
    panels: tuple[Panel, ...]
    slot: str | None = None


def slot_id(name: str) -> str:
    """``name`` made safe for element ids (letters, digits, ``_`` and ``-``).

    >>> slot_id("u recent/clicks")
    'u_recent_clicks'
    """
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _metric(metric: str) -> Series:
    return Series(metric, f"online.{metric}", f'freshrec_online_metric{{metric="{metric}"}}')


def _model_rows() -> list[Row]:
    quality = (
        Panel("model-auc", "Online AUC (progressive and windowed)", "AUC",
              (_metric("auc"), _metric("auc_window"))),
        Panel("model-logloss", "Log loss", "nats", (_metric("logloss"), _metric("logloss_window"))),
        Panel("model-calibration", "Calibration (mean prediction / mean label)", "ratio",
              (_metric("calibration"), _metric("calibration_window"))),
    )
    throughput = (
        Panel("model-examples", "Training throughput", "examples/s",
              (Series("examples/s", "online.examples_per_s",
                      'freshrec_online_metric{metric="examples_per_s"}'),)),
        Panel("model-freshness", "Freshness: event -> servable", "s",
              (Series("freshness", "serve.freshness_s", "freshrec_freshness_seconds"),)),
    )
    serving = (
        Panel("serve-latency", "Serving latency", "ms", tuple(
            Series(f"p{q}", f"serve.latency_p{q}_ms",
                   f"1000 * histogram_quantile(0.{q}, "
                   f"sum by (le) (rate(freshrec_request_seconds_bucket[1m])))")
            for q in ("50", "99"))),
        Panel("serve-qps", "Serving QPS", "requests/s",
              (Series("qps", "serve.qps", "sum(rate(freshrec_requests_total[1m]))"),)),
        Panel("serve-auc", "Serving AUC (served scores joined with clicks, per window)", "AUC",
              (Series("serving auc", "serve.auc", "freshrec_serving_auc"),)),
    )
    registry = (
        Panel("registry-versions", "Registry head and served version", "version",
              (Series("registry head", "registry.version", "freshrec_registry_head_version"),
               Series("served", "serve.version", "freshrec_model_version"))),
        Panel("registry-auc", "AUC published with each version", "AUC",
              (Series("published auc", "registry.auc",
                      'freshrec_registry_metric{metric="auc"}'),)),
        Panel("join-lag", "Joiner lag (newest event - newest example)", "s",
              (Series("lag", "join.lag_s", "freshrec_joiner_lag_seconds"),)),
        Panel("join-quarantined", "Quarantined examples", "examples",
              (Series("quarantined", "join.quarantined", "freshrec_joiner_quarantined_records"),)),
    )
    return [Row("Online quality", quality), Row("Throughput and freshness", throughput),
            Row("Serving", serving), Row("Registry and joiner", registry)]


def _slot_row(slot: str, table: str) -> Row:
    sid = slot_id(slot)
    lab = f'slot="{slot}"'
    tab = f'table="{table}"'
    return Row(f"slot {slot}", (
        Panel(f"slot-{sid}-coverage", f"{slot}: coverage", "share of examples",
              (Series("coverage", f"slot.{slot}.coverage", f"freshrec_slot_coverage{{{lab}}}"),)),
        Panel(f"slot-{sid}-distinct", f"{slot}: distinct ids per window", "ids",
              (Series("distinct", f"slot.{slot}.distinct",
                      f"freshrec_slot_distinct_ids{{{lab}}}"),)),
        Panel(f"slot-{sid}-table", f"{slot}: table {table}", "rows", tuple(
            Series(what, f"table.{table}.{what}", f"freshrec_table_{what}{{{tab}}}")
            for what in ("entries", "admitted", "expired"))),
        Panel(f"slot-{sid}-importance", f"{slot}: importance", "importance",
              (Series("importance", f"slot.{slot}.importance",
                      f"freshrec_feature_importance{{{lab}}}"),)),
    ), slot=slot)


def dashboard_layout(config: FreshrecConfig) -> list[Row]:
    """The rows of the dashboard of ``config``: the model rows, then one row per slot in
    the config's order."""
    return _model_rows() + [_slot_row(s.name, s.table) for s in config.features.slots]
