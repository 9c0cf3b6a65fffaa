"""Prometheus alerting rules generated from the ``ops.alerts`` of the config, over the
metrics ``freshrec serve`` and ``freshrec dashboard`` export (the same rules ``freshrec
watch`` evaluates itself, :mod:`freshrec.ops.alerts`). Per-slot rules (coverage, importance)
get one Prometheus rule per slot of the config.

Examples
--------
>>> import yaml
>>> from freshrec.config import config_from_dict
>>> cfg = config_from_dict({
...     "features": {"tables": {"item": {"dim": 4}}, "slots": {"item_id": {"table": "item"}}},
...     "model": {"kind": "deepfm", "mlp": [8]},
...     "ops": {"alerts": [{"name": "auc", "kind": "auc_drop", "threshold": 0.02,
...                         "window_s": 1800}]}})
>>> rule = yaml.safe_load(prometheus_rules(cfg))["groups"][0]["rules"][0]
>>> rule["alert"], rule["expr"]
('auc', 'max_over_time(freshrec_online_metric{metric="auc_window"}[1800s]) - freshrec_online_metric{metric="auc_window"} > 0.02')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from freshrec.ops.config import AlertKind, AlertRule

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["prometheus_rules", "rule_exprs"]


def rule_exprs(rule: AlertRule, slots: list[str]) -> list[tuple[str, str, dict[str, str]]]:
    """``(alert name, PromQL expression, extra labels)`` of one config rule."""
    w = f"[{int(rule.window_s)}s]"
    k = rule.kind
    if k is AlertKind.AUC_DROP:
        m = f'freshrec_online_metric{{metric="{rule.metric}"}}'
        return [(rule.name, f"max_over_time({m}{w}) - {m} > {rule.threshold:g}", {})]
    if k is AlertKind.CALIBRATION_RANGE:
        m = f'freshrec_online_metric{{metric="{rule.metric}"}}'
        return [(rule.name, f"{m} < {rule.low:g} or {m} > {rule.high:g}", {})]
    if k is AlertKind.JOINER_LAG:
        return [(rule.name, f"freshrec_joiner_lag_seconds > {rule.threshold:g}", {})]
    if k is AlertKind.FRESHNESS_P99:
        return [(rule.name, f"quantile_over_time(0.99, freshrec_freshness_seconds{w}) > "
                            f"{rule.threshold:g}", {})]
    out = []
    for s in slots:
        if k is AlertKind.COVERAGE_DROP:
            m = f'freshrec_slot_coverage{{slot="{s}"}}'
            expr = f"max_over_time({m}{w}) - {m} > {rule.threshold:g}"
        else:  # importance change between now and the window's start, relative
            m = f'freshrec_feature_importance{{slot="{s}"}}'
            expr = f"abs({m} - {m} offset {int(rule.window_s)}s) > {rule.threshold:g} * " \
                   f"{m} offset {int(rule.window_s)}s"
        out.append((f"{rule.name}_{s}", expr, {"slot": s}))
    return out


def prometheus_rules(config: FreshrecConfig, *, group: str = "freshrec") -> str:
    """The rules file (YAML, ``promtool check rules`` format) of ``config.ops.alerts``."""
    slots = [s.name for s in config.features.slots]
    rules: list[dict[str, Any]] = []
    for r in config.ops.alerts:
        for name, expr, labels in rule_exprs(r, slots):
            rules.append({"alert": name, "expr": expr,
                          "labels": {"severity": r.severity, "rule": r.name, **labels},
                          "annotations": {"summary": f"freshrec {r.kind.value}: {name}",
                                          "description": _describe(r)}})
    return yaml.safe_dump({"groups": [{"name": group, "rules": rules}]}, sort_keys=False,
                          width=1000)


def _describe(r: AlertRule) -> str:
    k = r.kind
    if k is AlertKind.CALIBRATION_RANGE:
        return f"{r.metric} outside [{r.low:g}, {r.high:g}]"
    if k is AlertKind.IMPORTANCE_CHANGE:
        return f"importance changed by more than {r.threshold:.0%} in {r.window_s:g} s"
    return f"{k.value} beyond {r.threshold:g} (window {r.window_s:g} s)"
