"""The operations report (``freshrec report --since 24h``): what happened to the model over a
period, as JSON (kept, so the next report can show changes), Markdown and HTML.

Sections: quality per window (AUC, calibration, log loss, examples, positive ratio), the
serving AUC per window (the scores the server gave, joined with the clicks), feature
importance per slot with its change from the previous report, coverage per slot (first and
last window of the period), the stream (examples, positives, quarantined), freshness (event
time of each published version to its publication), and the registry (versions published,
rollbacks and publishes the gate refused, with their reasons).

Examples
--------
>>> parse_since("24h"), parse_since("90m"), parse_since("3600")
(86400.0, 5400.0, 3600.0)
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from freshrec.errors import InputError
from freshrec.ops.sources import read_metrics, registry_history

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["build_report", "parse_since", "render_html", "render_markdown", "write_report"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """``24h``, ``90m``, ``2d``, ``3600`` (seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not m:
        raise InputError(f"--since {text!r}: expected a duration such as 24h, 90m, 2d or 3600")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _r(v: Any, nd: int = 4) -> Any:
    return round(float(v), nd) if isinstance(v, int | float) and math.isfinite(v) else None


def _time(rec: dict[str, Any]) -> float | None:
    t = rec.get("wall_unix_s", rec.get("event_time"))
    return float(t) if isinstance(t, int | float) else None


def build_report(config: FreshrecConfig, *, run_dirs: Sequence[str | Path],
                 registry: str | Path | None, since_s: float, now: float | None = None,
                 previous: dict[str, Any] | None = None,
                 serving: Sequence[Sequence[Any]] = ()) -> dict[str, Any]:
    """The report's content as JSON values (see the module docstring); ``serving``: the
    serving AUC's windows, ``(start, AUC, served version, judged good)`` as
    :attr:`RollbackGuard.history <freshrec.ops.rollback.RollbackGuard.history>` holds them
    (:func:`freshrec.ops.serving.serving_windows`)."""
    now = time.time() if now is None else now
    start = now - since_s
    windows: list[dict[str, Any]] = []
    importance: dict[str, float] = {}
    for run in run_dirs:
        records, _ = read_metrics(run)
        for rec in records:
            t = _time(rec)
            if rec.get("kind") == "importance":
                wall = rec.get("window", 0)  # the window's event-time start
                if isinstance(rec.get("slot"), str) and wall >= start - 10 * since_s:
                    importance[rec["slot"]] = float(rec["importance"])
            elif rec.get("kind") == "window" and t is not None and start <= t <= now:
                windows.append(rec)
    windows.sort(key=lambda r: r.get("event_time", 0))
    quality = []
    prev_examples = None
    for w in windows:
        ex = w.get("examples")
        quality.append({"event_time": w.get("event_time"), "auc": _r(w.get("auc_window")),
                        "calibration": _r(w.get("calibration_window")),
                        "logloss": _r(w.get("logloss_window")),
                        "examples": (ex - prev_examples) if isinstance(ex, int)
                        and prev_examples is not None else None,
                        "positive_ratio": _r(w.get("positive_ratio"))})
        prev_examples = ex if isinstance(ex, int) else prev_examples
    slots = [s.name for s in config.features.slots]
    before = (previous or {}).get("importance", {})
    imp_rows = []
    for s in slots:
        v, old = importance.get(s), before.get(s, {}).get("importance")
        change = (v - old) / old if v is not None and isinstance(old, int | float) and old > 0 \
            else None
        imp_rows.append({"slot": s, "importance": _r(v, 6), "previous": _r(old, 6),
                         "change": _r(change)})
    coverage = []
    for s in slots:
        cov = [w["slots"][s]["coverage"] for w in windows
               if isinstance(w.get("slots", {}).get(s, {}).get("coverage"), int | float)]
        coverage.append({"slot": s, "first": _r(cov[0]) if cov else None,
                         "last": _r(cov[-1]) if cov else None,
                         "min": _r(min(cov)) if cov else None})
    versions, rollbacks, refused, fresh = [], [], [], []
    if registry is not None:
        from freshrec.sync.registry import Registry

        for ver in registry_history(registry):
            if not start <= ver["created_unix_s"] <= now:
                continue
            versions.append(ver)
            if isinstance(ver["event_time"], int | float):
                fresh.append(ver["created_unix_s"] - ver["event_time"])
        for e in Registry(registry).events():
            if not start <= float(e.get("unix_s", 0)) <= now:
                continue
            if e.get("kind") == "rollback":
                rollbacks.append(e)
            elif e.get("kind") == "gate_refused":
                refused.append(e)
    ex_total = sum(q["examples"] or 0 for q in quality)
    served = [{"event_time": w[0], "auc": _r(w[1]), "version": int(w[2]),
               "judged": {True: "good", False: "bad"}.get(w[3])}
              for w in serving if start <= w[0] <= now and _r(w[1]) is not None]
    return {
        "serving": served,
        "generated_unix_s": round(now, 3), "since_s": since_s, "windows": quality,
        "importance": {r["slot"]: r for r in imp_rows}, "coverage": coverage,
        "stream": {"windows": len(quality), "examples": ex_total,
                   "positive_ratio": _r(np.mean([q["positive_ratio"] for q in quality
                                                 if q["positive_ratio"] is not None]))
                   if any(q["positive_ratio"] is not None for q in quality) else None},
        "freshness": {"versions": len(fresh),
                      "publish_lag_p50_s": _r(np.percentile(fresh, 50), 2) if fresh else None,
                      "publish_lag_p99_s": _r(np.percentile(fresh, 99), 2) if fresh else None},
        "registry": {"published": len(versions),
                     "full": sum(ver["kind"] == "full" for ver in versions),
                     "first": versions[0]["version"] if versions else None,
                     "last": versions[-1]["version"] if versions else None,
                     "rollbacks": [{"to": e.get("to"), "from": e.get("from"),
                                    "reason": e.get("reason")} for e in rollbacks],
                     "gate_refused": len(refused),
                     "gate_last_reason": refused[-1].get("reason") if refused else None},
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _when(t: Any) -> Any:
    """Event times that are unix seconds as UTC date and time; others (steps) as they are."""
    if isinstance(t, int | float) and t > 1e9:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
    return t


def _tables(r: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    imp = list(r["importance"].values())
    reg = r["registry"]
    return [
        ("Quality per window", ["event time", "AUC", "calibration", "log loss", "examples",
                                "positive ratio"],
         [[_when(q["event_time"]), q["auc"], q["calibration"], q["logloss"], q["examples"],
           q["positive_ratio"]] for q in r["windows"]]),
        ("Serving AUC per window (served scores joined with clicks)",
         ["window start", "AUC", "served version", "rollback guard"],
         [[_when(w["event_time"]), w["auc"], w["version"], w["judged"]]
          for w in r.get("serving", ())]),
        ("Feature importance", ["slot", "importance", "previous report", "change"],
         [[i["slot"], i["importance"], i["previous"],
           f"{i['change']:+.1%}" if i["change"] is not None else None] for i in imp]),
        ("Coverage", ["slot", "first window", "last window", "lowest"],
         [[c["slot"], c["first"], c["last"], c["min"]] for c in r["coverage"]]),
        ("Stream", ["windows", "examples", "positive ratio"],
         [[r["stream"]["windows"], r["stream"]["examples"], r["stream"]["positive_ratio"]]]),
        ("Freshness (event time -> published)", ["versions", "p50 s", "p99 s"],
         [[r["freshness"]["versions"], r["freshness"]["publish_lag_p50_s"],
           r["freshness"]["publish_lag_p99_s"]]]),
        ("Registry", ["published", "full snapshots", "first", "last", "rollbacks",
                      "publishes refused by the gate"],
         [[reg["published"], reg["full"], reg["first"], reg["last"], len(reg["rollbacks"]),
           reg["gate_refused"]]]),
        ("Rollbacks", ["to", "from", "reason"],
         [[b["to"], b["from"], b["reason"]] for b in reg["rollbacks"]]),
    ]


def render_markdown(r: dict[str, Any], *, title: str) -> str:
    """The report as Markdown."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r["generated_unix_s"]))
    out = [f"# {title}", "", f"Generated {when}, covering the last {r['since_s'] / 3600:g} h.",
           ""]
    for name, head, rows in _tables(r):
        out += [f"## {name}", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)]
        out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        out.append("")
    if r["registry"]["gate_last_reason"]:
        out += [f"Last refusal by the gate: {r['registry']['gate_last_reason']}", ""]
    return "\n".join(out)


def render_html(r: dict[str, Any], *, title: str) -> str:
    """The report as a standalone HTML page."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             "</title><style>body{font-family:system-ui,sans-serif;margin:16px}table{border-"
             "collapse:collapse;margin-bottom:14px}td,th{border:1px solid #ccc;padding:2px 8px;"
             "text-align:right}th{background:#eee}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for name, head, rows in _tables(r):
        parts.append(f"<h2>{html.escape(name)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                  for row in rows]
        parts.append("</table>")
    if r["registry"]["gate_last_reason"]:
        parts.append(f"<p>Last refusal by the gate: "
                     f"{html.escape(r['registry']['gate_last_reason'])}</p>")
    return "".join(parts) + "</body></html>"


def write_report(r: dict[str, Any], out_dir: str | Path, *, title: str) -> dict[str, Path]:
    """Write ``report-<time>.{json,md,html}`` and ``latest.json`` (the next report's previous)
    into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(r["generated_unix_s"]))
    paths = {"json": out / f"report-{stamp}.json", "md": out / f"report-{stamp}.md",
             "html": out / f"report-{stamp}.html"}
    paths["json"].write_text(json.dumps(r, indent=1))
    paths["md"].write_text(render_markdown(r, title=title))
    paths["html"].write_text(render_html(r, title=title))
    (out / "latest.json").write_text(json.dumps(r, indent=1))
    return paths
