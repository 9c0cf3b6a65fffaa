"""The ``ops`` section of the config document: alert rules, where alerts go, the publish gate
and automatic rollback.

Examples
--------
>>> from freshrec._validate import build_config
>>> ops = build_config(OpsConfig, {"alerts": [{"name": "auc", "kind": "auc_drop",
...                                            "threshold": 0.02, "window_s": 600}]}, "inline")
>>> ops.alerts[0].kind.value, ops.gate.enabled
('auc_drop', False)
>>> build_config(OpsConfig, {"alerts": [{"name": "x", "kind": "auc_rise"}]}, "c.yaml: ops")
Traceback (most recent call last):
...
freshrec.errors.ConfigError: c.yaml: ops: alerts[0]: AlertRule 'x': kind must be one of auc_drop, calibration_range, coverage_drop, freshness_p99, importance_change, joiner_lag, got 'auc_rise'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum, unique

from freshrec._validate import build_config, is_int, is_number, require
from freshrec.errors import ConfigError

__all__ = ["AlertKind", "AlertRule", "GateConfig", "OpsConfig", "RollbackConfig"]


@unique
class AlertKind(StrEnum):
    """What an alert rule watches (see :class:`AlertRule` for the meaning of its numbers)."""

    AUC_DROP = "auc_drop"
    """``metric`` (default windowed online AUC) fell by more than ``threshold`` within the
    last ``window_s`` seconds (newest value against the highest one in the window)."""
    CALIBRATION_RANGE = "calibration_range"
    """``metric`` (default windowed calibration) left ``[low, high]``."""
    IMPORTANCE_CHANGE = "importance_change"
    """A feature's importance changed by more than ``threshold`` (a fraction: 0.5 = 50 %)
    between its two newest importance records."""
    COVERAGE_DROP = "coverage_drop"
    """A slot's coverage (share of examples with an id in it) fell by more than
    ``threshold`` (absolute) against the highest value within ``window_s``."""
    JOINER_LAG = "joiner_lag"
    """Events the joiner has not read yet exceed ``threshold``."""
    FRESHNESS_P99 = "freshness_p99"
    """The 99th percentile of the serving freshness (now - event time of the newest update)
    over ``window_s`` exceeds ``threshold`` seconds."""


_KINDS = ", ".join(sorted(k.value for k in AlertKind))


@dataclass(frozen=True, kw_only=True)
class AlertRule:
    """One alert rule.

    Parameters
    ----------
    name : str
        Names the alert in the log, the webhook body and the Prometheus rules.
    kind : AlertKind
    threshold : float
        The allowed change or level (see :class:`AlertKind`).
    window_s : float
        Seconds of history the rule looks at.
    low, high : float
        The allowed calibration range.
    metric : str
        The model metric of ``auc_drop`` / ``calibration_range`` (``""``: ``auc_window`` or
        ``calibration_window``).
    severity : str
        Carried into the alert (``warning``, ``critical``, ...).
    """

    name: str
    kind: AlertKind
    threshold: float = 0.0
    window_s: float = 600.0
    low: float = 0.8
    high: float = 1.2
    metric: str = ""
    severity: str = "warning"

    def __post_init__(self) -> None:
        o = f"AlertRule {self.name!r}"
        require(isinstance(self.name, str) and bool(self.name), "AlertRule", "name",
                "a non-empty string", self.name)
        try:
            object.__setattr__(self, "kind", AlertKind(self.kind))
        except ValueError:
            raise ConfigError(f"{o}: kind must be one of {_KINDS}, got {self.kind!r}") from None
        for f in ("threshold", "window_s", "low", "high"):
            v = getattr(self, f)
            require(is_number(v) and v >= 0, o, f, "a number >= 0", v)
        require(self.low <= self.high, o, "low", f"<= high ({self.high})", self.low)
        require(self.window_s > 0, o, "window_s", "a number > 0", self.window_s)
        if not self.metric:
            default = "calibration_window" if self.kind is AlertKind.CALIBRATION_RANGE \
                else "auc_window"
            object.__setattr__(self, "metric", default)


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """The publish gate of the online trainer.

    Parameters
    ----------
    enabled : bool
    holdout_fraction : float
        Share of the incoming examples held back from training (a fixed hash of the row's
        position decides) and kept for scoring candidates.
    holdout_examples : int
        The most recent held-back examples a candidate is scored on.
    min_examples : int
        Fewer held-back examples than this: publish without a check.
    max_auc_drop : float
        Refuse when the candidate's AUC on the held-back slice is lower than the reference
        (the serving version's, or the median of the last ``reference_publishes`` accepted
        checks, the higher) by more than this.
    reference_publishes : int
        Accepted checks whose median AUC is part of the reference.
    calibration_low, calibration_high : float
        Refuse when the candidate's calibration (mean prediction / mean label) on the slice
        leaves this range.
    """

    enabled: bool = False
    holdout_fraction: float = 0.05
    holdout_examples: int = 2000
    min_examples: int = 200
    max_auc_drop: float = 0.02
    reference_publishes: int = 20
    calibration_low: float = 0.7
    calibration_high: float = 1.4

    def __post_init__(self) -> None:
        o = "GateConfig"
        require(isinstance(self.enabled, bool), o, "enabled", "true or false", self.enabled)
        require(is_number(self.holdout_fraction) and 0 < self.holdout_fraction < 1, o,
                "holdout_fraction", "a number in (0, 1)", self.holdout_fraction)
        for f in ("holdout_examples", "min_examples", "reference_publishes"):
            require(is_int(getattr(self, f)) and getattr(self, f) >= 1, o, f, "an int >= 1",
                    getattr(self, f))
        for f in ("max_auc_drop", "calibration_low", "calibration_high"):
            require(is_number(getattr(self, f)) and getattr(self, f) >= 0, o, f,
                    "a number >= 0", getattr(self, f))
        require(self.calibration_low <= self.calibration_high, o, "calibration_low",
                f"<= calibration_high ({self.calibration_high})", self.calibration_low)


@dataclass(frozen=True, kw_only=True)
class RollbackConfig:
    """Automatic rollback on the serving side's own AUC (scores joined with clicks).

    Parameters
    ----------
    enabled : bool
    max_auc_drop : float
        Roll back when the serving AUC over the last ``window_s`` is lower than the AUC the
        last good version had by more than this.
    window_s : float
        Event-time seconds of scored impressions in one measurement.
    min_examples : int
        A window with fewer examples (or without both classes) is not judged.
    patience : int
        Consecutive bad windows before rolling back (one noisy window does not).
    """

    enabled: bool = False
    max_auc_drop: float = 0.05
    window_s: float = 60.0
    min_examples: int = 500
    patience: int = 2

    def __post_init__(self) -> None:
        o = "RollbackConfig"
        require(isinstance(self.enabled, bool), o, "enabled", "true or false", self.enabled)
        require(is_number(self.max_auc_drop) and self.max_auc_drop >= 0, o, "max_auc_drop",
                "a number >= 0", self.max_auc_drop)
        require(is_number(self.window_s) and self.window_s > 0, o, "window_s", "a number > 0",
                self.window_s)
        for f in ("min_examples", "patience"):
            require(is_int(getattr(self, f)) and getattr(self, f) >= 1, o, f, "an int >= 1",
                    getattr(self, f))


@dataclass(frozen=True, kw_only=True)
class OpsConfig:
    """The ``ops`` section: alerts, where they go, the publish gate and rollback.

    Parameters
    ----------
    alerts : tuple of AlertRule
        Evaluated by ``freshrec watch``, exported as Prometheus rules by ``freshrec dashboard
        --rules``.
    webhook : str
        ``http://...`` URL each alert is POSTed to as JSON (``""``: log only).
    webhook_retries : int
        Attempts per alert before it is counted as undelivered (with back-off).
    watch_interval_s : float
        Seconds between two evaluations of ``freshrec watch``.
    watch_state_dir : str
        Where ``freshrec watch`` keeps its checkpoint (``watch.json``; ``""``: ``watch/`` in
        the first run directory, none without one).
    watch_checkpoint_s : float
        Seconds between two checkpoints of ``freshrec watch`` (also written when it stops).
    gate : GateConfig
    rollback : RollbackConfig
    """

    alerts: tuple[AlertRule, ...] = ()
    webhook: str = ""
    webhook_retries: int = 3
    watch_interval_s: float = 10.0
    watch_state_dir: str = ""
    watch_checkpoint_s: float = 60.0
    gate: GateConfig = field(default_factory=GateConfig)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)

    def __post_init__(self) -> None:
        o = "OpsConfig"
        rules = []
        for i, r in enumerate(self.alerts):
            rules.append(build_config(AlertRule, r, f"alerts[{i}]") if isinstance(r, Mapping)
                         else r)
            require(isinstance(rules[-1], AlertRule), o, f"alerts[{i}]", "a mapping", r)
        names = [r.name for r in rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, o, "alerts", "rules with distinct names", dup)
        object.__setattr__(self, "alerts", tuple(rules))
        require(isinstance(self.webhook, str) and (not self.webhook or self.webhook.startswith(
            ("http://", "https://"))), o, "webhook", "'' or an http(s):// URL", self.webhook)
        require(is_int(self.webhook_retries) and self.webhook_retries >= 1, o,
                "webhook_retries", "an int >= 1", self.webhook_retries)
        require(is_number(self.watch_interval_s) and self.watch_interval_s > 0, o,
                "watch_interval_s", "a number > 0", self.watch_interval_s)
        require(isinstance(self.watch_state_dir, str), o, "watch_state_dir", "a path",
                self.watch_state_dir)
        require(is_number(self.watch_checkpoint_s) and self.watch_checkpoint_s > 0, o,
                "watch_checkpoint_s", "a number > 0", self.watch_checkpoint_s)
