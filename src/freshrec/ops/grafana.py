"""A Grafana dashboard generated from the model config, built with Grafana Labs' own typed
builder library (``grafana-foundation-sdk``), for teams that already run Grafana.

The rows and panels are those of :func:`~freshrec.ops.layout.dashboard_layout`; each series is
a Prometheus query (``Series.expr``) over what ``freshrec serve`` and ``freshrec dashboard``
export on ``/metrics``, against the data source chosen by the ``datasource`` variable.

Examples
--------
>>> import json
>>> from freshrec.config import config_from_dict
>>> cfg = config_from_dict({"features": {"tables": {"item": {"dim": 4}},
...                                      "slots": {"item_id": {"table": "item"}}},
...                         "model": {"kind": "deepfm", "mlp": [8]}})
>>> d = json.loads(grafana_dashboard(cfg, title="demo"))
>>> [p["title"] for p in d["panels"] if p["type"] == "row"][-1]
'slot item_id'
>>> d["panels"][-1]["targets"][0]["expr"]
'freshrec_feature_importance{slot="item_id"}'
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import timeseries as gt
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from freshrec.ops.layout import Panel, dashboard_layout, slot_id

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["grafana_dashboard"]

_UNITS = {"s": "s", "ms": "ms", "requests/s": "reqps", "share of examples": "percentunit"}
_DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _panel(p: Panel) -> gt.Panel:
    panel = (gt.Panel().title(p.title).unit(_UNITS.get(p.unit, "short")).height(7).span(6)
             .datasource(_DATASOURCE))
    for i, s in enumerate(p.series):
        panel = panel.with_target(gp.Dataquery().expr(s.expr).legend_format(s.name)
                                  .ref_id(chr(ord("A") + i)))
    return panel


def grafana_dashboard(config: FreshrecConfig, *, title: str) -> str:
    """The dashboard JSON (Grafana's dashboard model, importable as is)."""
    uid = "freshrec-" + slot_id(title.lower())[:30]
    b = (gd.Dashboard(title).uid(uid).tags(["freshrec"]).refresh("30s").time("now-6h", "now")
         .with_variable(gd.DatasourceVariable("datasource").label("Prometheus")
                        .type("prometheus")))
    for row in dashboard_layout(config):
        b = b.with_row(gd.Row(row.title))
        for p in row.panels:
            b = b.with_panel(_panel(p))
    return json.dumps(b.build(), cls=JSONEncoder, indent=1, sort_keys=True)
