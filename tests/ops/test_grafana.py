"""The Grafana dashboard generated from the config, checked by parsing it back into Grafana
Labs' typed dashboard model (grafana-foundation-sdk) and against the layout."""

from __future__ import annotations

import json

from grafana_foundation_sdk.models.dashboard import Dashboard

from freshrec.config import config_from_dict
from freshrec.ops.grafana import grafana_dashboard
from freshrec.ops.layout import dashboard_layout
from tests.ops.conftest import model_doc


def test_grafana_dashboard_round_trips_and_has_a_row_per_slot() -> None:
    slots = ["user_id", "item_id", "new_slot"]
    cfg = config_from_dict(model_doc(slots))
    text = grafana_dashboard(cfg, title="t")
    d = json.loads(text)
    model = Dashboard.from_json(d)
    assert model.title == "t" and model.uid == "freshrec-t"
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows[-3:] == [f"slot {s}" for s in slots]
    layout = dashboard_layout(cfg)
    charts = [p for p in d["panels"] if p["type"] == "timeseries"]
    assert len(charts) == sum(len(r.panels) for r in layout)
    want = [s.expr for r in layout for p in r.panels for s in p.series]
    assert [t["expr"] for p in charts for t in p["targets"]] == want
    assert all(p["datasource"]["uid"] == "${datasource}" for p in charts)
    assert d["templating"]["list"][0]["type"] == "datasource"
    # panels do not overlap on Grafana's 24-column grid
    cells = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in charts}
    assert len(cells) == len(charts)
