"""Reads the Prometheus text that ``freshrec serve`` exposes on ``/metrics`` into numbers.

Examples
--------
>>> parse_prometheus('# HELP x y\\nfreshrec_model_version 3\\na{k="1"} 2\\na{k="2"} 1\\n')
{'freshrec_model_version': 3.0, 'a': 3.0}
"""

from __future__ import annotations

import math

__all__ = ["parse_prometheus"]


def parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels} value`` lines -> ``{name: value}``, summing a metric's label sets.

    Comment lines and lines whose value is not a number are skipped; a NaN sample makes its
    metric NaN.
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        try:
            v = float(value)
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + v if not math.isnan(v) else math.nan
    return out
