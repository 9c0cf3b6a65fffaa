"""Operations: a dashboard generated from the model config, alerts, a daily report, and a
publish gate with automatic rollback.

The dashboard's panels come from the config (:func:`dashboard_layout`): one row per feature
slot and rows for the model, the registry, serving and the joiner; the same layout gives a
Grafana dashboard and Prometheus alerting rules. The data are what the system already writes:
``metrics.jsonl`` in run directories, registry manifests and events, the joiner's logs and the
server's Prometheus ``/metrics`` (:class:`Collector`).
"""

from typing import TYPE_CHECKING, Any

from freshrec._lazy import lazy_attribute
from freshrec.ops.config import AlertKind, AlertRule, GateConfig, OpsConfig, RollbackConfig

if TYPE_CHECKING:
    from freshrec.ops.collect import Collector
    from freshrec.ops.layout import Panel, Row, Series, dashboard_layout

#: Public name -> the module that defines it, imported on first use: reading a config
#: (``freshrec.config`` takes this package's section from here) does not load torch.
_LAZY = {"Collector": "collect", "Panel": "layout", "Row": "layout", "Series": "layout",
         "dashboard_layout": "layout"}

__all__ = [
    "AlertKind",
    "AlertRule",
    "Collector",
    "GateConfig",
    "OpsConfig",
    "Panel",
    "RollbackConfig",
    "Row",
    "Series",
    "dashboard_layout",
]


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
