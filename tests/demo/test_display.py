"""What the demo prints."""

from __future__ import annotations

import io
import math

from rich.console import Console

from freshrec.demo.display import print_outputs, progress_line, summary_table

PATHS = {"events": "file:runs/[a]/logs/events", "examples": "file:runs/[a]/logs/examples",
         "registry": "runs/[a]/registry", "proc": "runs/[a]/proc",
         "metrics": "runs/[a]/metrics.json"}


def _printed(fn, *args) -> str:
    out = io.StringIO()
    fn(Console(file=out, width=200), *args)
    return out.getvalue()


def test_outputs_keep_their_brackets():
    # rich took "[experiments]" (and any "[...]" in a path) for markup and dropped it
    text = _printed(print_outputs, PATHS, None)
    assert "pip install 'freshrec[experiments]'" in text
    assert "runs/[a]/registry" in text and "runs/[a]/proc/{serve,join,train}.log" in text
    assert "plot:      runs/[a]/demo.png" in _printed(print_outputs, PATHS, "runs/[a]/demo.png")


def test_summary_table_and_progress_line_show_missing_values_as_dashes():
    s = {"duration_s": 20.0, "requests_per_s": 10.0, "requests": 200, "request_errors": 0,
         "latency_p50_ms": 3.0, "latency_p99_ms": math.nan, "clicks": 50, "events": 250,
         "examples_joined": 1000, "examples_trained": 900, "versions_published": 5,
         "registry_head": 5, "updates_applied": 4, "served_version": None,
         "online_auc": 0.61, "serving_auc": math.nan, "oracle_auc": 0.7,
         "freshness_last_s": 8.0, "freshness_median_s": 8.5}
    out = io.StringIO()
    Console(file=out, width=200).print(summary_table(s))
    text = out.getvalue()
    assert "3.00 / -" in text and "4 (-)" in text and "0.6100" in text
    sample = {"requests": 5, "latency_p50_ms": 1.0, "latency_p99_ms": None, "examples_out": 7,
              "online_auc": None, "registry_version": 2, "served_version": None,
              "freshness_s": 3.0}
    assert progress_line(sample, 10.0) == ("   10s  req 5  p50/p99 1.0/- ms  examples 7  "
                                           "auc -  version 2/-  fresh 3.0 s")
