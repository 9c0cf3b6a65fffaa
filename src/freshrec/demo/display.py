"""What the demo shows: the live table, the progress line, the summary table and where it
wrote everything (with rich).

Examples
--------
>>> print(outputs({"events": "file:logs/events", "examples": "file:logs/examples",
...                "registry": "registry", "proc": "proc", "metrics": "metrics.json"}, None))
logs:      file:logs/events  file:logs/examples
registry:  registry  (freshrec registry ls --dir registry)
processes: proc/{serve,join,train}.log
metrics:   metrics.json
plot:      not written: needs matplotlib (pip install 'freshrec[experiments]')
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["fmt", "live_table", "progress_line", "summary_table", "outputs", "print_outputs"]


def fmt(v: Any, spec: str = "", none: str = "-") -> str:
    """``format(v, spec)``, or ``none`` for a missing value (None or NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def live_table(sample: dict[str, Any], duration_s: float, elapsed: float) -> Table:
    """The live table of one :meth:`~freshrec.demo.monitor.Monitor.tick` sample."""
    from rich.table import Table

    t = Table(title=f"freshrec demo  {elapsed:5.0f} / {duration_s:.0f} s",
              show_header=False, min_width=60)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("requests (ok / errors)", f"{sample['requests']:,} / {sample['errors']:,}"),
        ("requests/s", fmt(sample["requests_per_s"], ".1f")),
        ("latency p50 / p99 (ms, last 10 s)",
         f"{fmt(sample['latency_p50_ms'], '.2f')} / {fmt(sample['latency_p99_ms'], '.2f')}"),
        ("events in the log (events/s)",
         f"{sample['events']:,} ({fmt(sample['events_per_s'], ',.0f')})"),
        ("examples joined", f"{sample['examples_out']:,}"),
        ("examples trained", fmt(sample["examples_trained"], ",")),
        ("online AUC (trainer, progressive)", fmt(sample["online_auc"], ".4f")),
        ("serving AUC (scores vs clicks, 10 s)", fmt(sample["serving_auc_10s"], ".4f")),
        ("registry version / served version",
         f"{fmt(sample['registry_version'])} / {fmt(sample['served_version'])}"),
        ("freshness of the served model (s)", fmt(sample["freshness_s"], ".1f")),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run table of a :meth:`~freshrec.demo.monitor.Monitor.summary`."""
    from rich.table import Table

    t = Table(title="freshrec demo: summary", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    s = summary
    rows = [
        ("traffic", f"{s['duration_s']:.0f} s, {s['requests_per_s']:.1f} requests/s"),
        ("requests (ok / errors)", f"{s['requests']:,} / {s['request_errors']:,}"),
        ("latency p50 / p99 (ms)",
         f"{fmt(s['latency_p50_ms'], '.2f')} / {fmt(s['latency_p99_ms'], '.2f')}"),
        ("clicks / events in the log", f"{s['clicks']:,} / {s['events']:,}"),
        ("examples joined / trained", f"{s['examples_joined']:,} / {s['examples_trained']:,}"),
        ("versions published (registry HEAD)",
         f"{s['versions_published']} ({fmt(s['registry_head'])})"),
        ("updates applied by the server (served version)",
         f"{s['updates_applied']} ({fmt(s['served_version'])})"),
        ("online AUC (trainer, progressive)", fmt(s["online_auc"], ".4f")),
        ("serving AUC (scores vs clicks)", fmt(s["serving_auc"], ".4f")),
        ("oracle AUC (true click probability)", fmt(s["oracle_auc"], ".4f")),
        ("freshness last / median (s)",
         f"{fmt(s['freshness_last_s'], '.1f')} / {fmt(s['freshness_median_s'], '.1f')}"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def progress_line(sample: dict[str, Any], elapsed: float) -> str:
    """One line of a sample, printed every 5 s instead of the live table."""
    return (f"{elapsed:5.0f}s  req {sample['requests']:,}  "
            f"p50/p99 {fmt(sample['latency_p50_ms'], '.1f')}/"
            f"{fmt(sample['latency_p99_ms'], '.1f')} ms  "
            f"examples {sample['examples_out']:,}  "
            f"auc {fmt(sample['online_auc'], '.3f')}  "
            f"version {fmt(sample['registry_version'])}/{fmt(sample['served_version'])}  "
            f"fresh {fmt(sample['freshness_s'], '.1f')} s")


def outputs(paths: dict[str, str], plot: str | None) -> str:
    """Where the run wrote its logs, registry, children's output, metrics and plot."""
    plot = plot or "not written: needs matplotlib (pip install 'freshrec[experiments]')"
    return (f"logs:      {paths['events']}  {paths['examples']}\n"
            f"registry:  {paths['registry']}  (freshrec registry ls --dir {paths['registry']})\n"
            f"processes: {paths['proc']}/{{serve,join,train}}.log\n"
            f"metrics:   {paths['metrics']}\n"
            f"plot:      {plot}")


def print_outputs(console: Console, paths: dict[str, str], plot: str | None) -> None:
    """Print :func:`outputs` as plain text: paths and the extra's name hold ``[...]``, which
    rich would take for markup and drop."""
    console.print(outputs(paths, plot), markup=False, highlight=False, soft_wrap=True)
