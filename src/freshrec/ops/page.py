"""The dashboard page: HTML generated from :func:`~freshrec.ops.layout.dashboard_layout`,
charts drawn by Plotly's JavaScript (``plotly.min.js`` from the ``plotly`` Python package,
served from the same place as the page, so nothing is fetched from the internet).

The page loads ``data.js`` (``window.FRESHREC_DATA = {...}``, what
:meth:`~freshrec.ops.collect.Collector.collect` returns) and, when served over HTTP, polls
``data.json`` every few seconds. Each panel element carries ``data-points`` (points drawn)
once rendered; errors in the page are listed in ``#errors`` (the browser test reads both).

Examples
--------
>>> from freshrec.config import config_from_dict
>>> cfg = config_from_dict({"features": {"tables": {"item": {"dim": 4}},
...                                      "slots": {"item_id": {"table": "item"}}},
...                         "model": {"kind": "deepfm", "mlp": [8]}})
>>> html = render_page(cfg, title="demo")
>>> 'id="slot-item_id-coverage"' in html and 'src="plotly.min.js"' in html
True
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freshrec.ops.layout import dashboard_layout

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["data_script", "export_page", "plotly_js", "render_page"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 12px; background: #fafafa; color: #222; }
h1 { font-size: 20px; margin: 4px 0 2px; } h2 { font-size: 15px; margin: 14px 0 4px; }
.meta { color: #666; font-size: 12px; }
.row { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 8px; }
.panel { background: #fff; border: 1px solid #ddd; border-radius: 4px; height: 230px; }
.empty { display: flex; align-items: center; justify-content: center; color: #999; }
#errors { color: #b00; }
"""

_SCRIPT = """
(function () {
  const errors = [];
  function report(msg) {
    errors.push(String(msg));
    const el = document.getElementById("errors");
    el.textContent = errors.join("\\n");
    el.setAttribute("data-count", String(errors.length));
  }
  window.addEventListener("error", (e) => report(e.message));
  const consoleError = console.error.bind(console);
  console.error = (...args) => { report(args.join(" ")); consoleError(...args); };
  window.addEventListener("unhandledrejection", (e) => report(e.reason));
  const LAYOUT = JSON.parse(document.getElementById("layout").textContent);
  function xs(points) {
    // unix seconds become dates; steps and small event times stay numbers
    return points.map((p) => (p[0] > 1e9 ? new Date(p[0] * 1000) : p[0]));
  }
  function draw(data) {
    for (const row of LAYOUT) {
      for (const panel of row.panels) {
        const el = document.getElementById(panel.id);
        const traces = [];
        let n = 0;
        for (const s of panel.series) {
          const pts = data.series[s.key] || [];
          n += pts.length;
          if (pts.length) {
            traces.push({x: xs(pts), y: pts.map((p) => p[1]), name: s.name,
                         type: "scatter", mode: pts.length > 30 ? "lines" : "lines+markers"});
          }
        }
        el.setAttribute("data-points", String(n));
        if (!n) {
          el.classList.add("empty");
          el.textContent = "no data yet";
          continue;
        }
        if (el.classList.contains("empty")) { el.classList.remove("empty"); el.textContent = ""; }
        Plotly.react(el, traces, {
          title: {text: panel.title, font: {size: 12}}, margin: {l: 45, r: 10, t: 30, b: 30},
          showlegend: traces.length > 1, legend: {orientation: "h", y: -0.25},
          yaxis: {title: {text: panel.unit, font: {size: 10}}}, font: {size: 10},
        }, {displayModeBar: false, responsive: true});
      }
    }
    const when = new Date(data.generated_unix_s * 1000).toISOString();
    document.getElementById("generated").textContent = "data of " + when;
    document.body.setAttribute("data-rendered", "1");
  }
  try { draw(window.FRESHREC_DATA); } catch (e) { report(e); }
  if (location.protocol.startsWith("http")) {
    setInterval(() => fetch("data.json").then((r) => r.json()).then(draw)
      .catch((e) => report(e)), REFRESH_MS);
  }
})();
"""


def _layout_json(config: FreshrecConfig) -> list[dict[str, Any]]:
    return [{"title": r.title, "slot": r.slot,
             "panels": [{"id": p.id, "title": p.title, "unit": p.unit,
                         "series": [{"name": s.name, "key": s.key} for s in p.series]}
                        for p in r.panels]}
            for r in dashboard_layout(config)]


def render_page(config: FreshrecConfig, *, title: str, refresh_s: float = 5.0) -> str:
    """The page's HTML: one ``div.row`` per layout row, one ``div.panel`` per panel."""
    rows = []
    for r in dashboard_layout(config):
        attr = f' data-slot="{html.escape(r.slot)}"' if r.slot is not None else ""
        panels = "".join(f'<div class="panel" id="{p.id}" title="{html.escape(p.title)}">'
                         f"</div>" for p in r.panels)
        rows.append(f'<section{attr}><h2>{html.escape(r.title)}</h2>'
                    f'<div class="row">{panels}</div></section>')
    layout = json.dumps(_layout_json(config)).replace("</", "<\\/")
    script = _SCRIPT.replace("REFRESH_MS", str(int(refresh_s * 1000)))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><div class=\"meta\" id=\"generated\"></div>"
            f'<pre id="errors" data-count="0"></pre>'
            + "".join(rows)
            + f'<script type="application/json" id="layout">{layout}</script>'
            '<script src="plotly.min.js"></script><script src="data.js"></script>'
            f"<script>{script}</script></body></html>")


def data_script(data: dict[str, Any]) -> str:
    """``data.js``: the collected data as a script (loads from ``file://`` too)."""
    return "window.FRESHREC_DATA = " + json.dumps(data).replace("</", "<\\/") + ";\n"


def plotly_js() -> bytes:
    """``plotly.min.js`` shipped inside the ``plotly`` Python package."""
    return resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()


def export_page(config: FreshrecConfig, data: dict[str, Any], out_dir: str | Path, *,
                title: str) -> Path:
    """Write ``index.html``, ``data.js``, ``data.json`` and ``plotly.min.js`` to ``out_dir``
    (a static copy that opens from disk); returns the ``index.html`` path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plotly.min.js").write_bytes(plotly_js())
    (out / "data.js").write_text(data_script(data))
    (out / "data.json").write_text(json.dumps(data))
    (out / "index.html").write_text(render_page(config, title=title))
    return out / "index.html"
