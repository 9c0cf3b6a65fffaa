"""Serving: millisecond scoring of one user against N candidates, with hot model updates.

A :class:`Predictor` scores a request with one model version: user-side features are
encoded and embedded once and broadcast, candidate features come from a :class:`FeatureIndex`
(raw features hashed once per distinct candidate, the Meituan write-up's feature index),
candidate rows are looked up in one batched call per table, and the first dense layer is
split into a per-request user block and a per-candidate block. A :class:`ModelUpdater`
follows the registry (:mod:`freshrec.sync`): sparse deltas are applied in place in a
background thread while requests are served, dense updates and full snapshots are loaded and
warmed up off the request path and swapped in with one reference assignment. The
:class:`Server` exposes it over HTTP (JSON and the KServe v2 inference protocol, health,
readiness and Prometheus metrics) and writes an impression event per request to the event
log, so that the joiner can join clicks to what was served.

Examples
--------
>>> from freshrec.serve import ServeConfig
>>> ServeConfig(port=0, threads=1).update_mode
'background'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freshrec._lazy import lazy_attribute
from freshrec.serve.config import ServeConfig, ServeJobConfig, serve_config_from_dict

if TYPE_CHECKING:
    from freshrec.serve.impressions import ImpressionWriter, impression_event
    from freshrec.serve.metrics import ServeMetrics
    from freshrec.serve.predictor import FeatureIndex, FeatureLayout, Predictor, column_side
    from freshrec.serve.request import (
        RequestError,
        ScoreRequest,
        parse_request,
        parse_v2_request,
    )
    from freshrec.serve.server import Server, default_log_spec, run_server
    from freshrec.serve.updater import ModelUpdater, config_from_registry

#: Public name -> the module that defines it. Only the configs are imported with the package:
#: :mod:`freshrec.config` reads the ``serve`` section without the serve extra (uvicorn) and
#: without importing the predictor, which imports :mod:`freshrec.config` itself.
_LAZY = {
    "FeatureIndex": "predictor", "FeatureLayout": "predictor", "Predictor": "predictor",
    "column_side": "predictor", "ImpressionWriter": "impressions",
    "impression_event": "impressions", "ServeMetrics": "metrics", "RequestError": "request",
    "ScoreRequest": "request", "parse_request": "request", "parse_v2_request": "request",
    "Server": "server", "default_log_spec": "server", "run_server": "server",
    "ModelUpdater": "updater", "config_from_registry": "updater",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)


__all__ = [
    "FeatureIndex",
    "FeatureLayout",
    "ImpressionWriter",
    "ModelUpdater",
    "Predictor",
    "RequestError",
    "ScoreRequest",
    "ServeConfig",
    "ServeJobConfig",
    "ServeMetrics",
    "Server",
    "column_side",
    "config_from_registry",
    "default_log_spec",
    "impression_event",
    "parse_request",
    "parse_v2_request",
    "run_server",
    "serve_config_from_dict",
]
