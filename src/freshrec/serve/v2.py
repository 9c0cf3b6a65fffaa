"""Open Inference Protocol (KServe v2) metadata: the server's and the served model's.

A client builds its inference request from :func:`model_metadata` alone: each input's
``name`` is the one :func:`~freshrec.serve.request.parse_v2_request` reads (``user_id``,
``u_<key>`` for the user, ``item_id``, ``i_<key>`` per candidate), its ``datatype`` is the
slot's value type (:class:`~freshrec.features.config.SlotDtype`: ``INT64`` for an ``int64``
slot, ``BYTES`` for a ``string`` slot, hashed exactly as training hashes the same strings)
or ``FP32`` for a dense value, and its ``shape`` has ``-1`` for each variable dimension:
``[1]`` for a user value, ``[1, -1]`` for a user list (a history), ``[-1]`` per candidate and
``[-1, -1]`` for a candidate list. The position slot is filled by the server and is not an
input. :func:`input_datatypes` is what a request's inputs are checked against
(:func:`~freshrec.serve.request.build_v2_request`). :func:`openapi_document` is the server's
HTTP API (the protocol's routes and freshrec's own) as an OpenAPI 3 document
(``serve/openapi.yaml``, served at ``GET /v2/openapi.json``).

Examples
--------
>>> from freshrec.features import feature_config_from_dict
>>> from freshrec.serve.predictor import FeatureLayout
>>> fc = feature_config_from_dict({"tables": {"t": {"dim": 2}}, "slots": {
...     "u_hist": {"table": "t", "kind": "multi"}, "item_id": {"table": "t"},
...     "i_genre": {"table": "t", "dtype": "string"},
...     "position": {"table": "t"}}, "dense": {"i_price": {}}})
>>> [(t["name"], t["datatype"], t["shape"]) for t in model_inputs(FeatureLayout(fc))]
[('u_hist', 'INT64', [1, -1]), ('item_id', 'INT64', [-1]), ('i_genre', 'BYTES', [-1]), ('i_price', 'FP32', [-1])]
"""

from __future__ import annotations

import functools
import weakref
from importlib import resources
from typing import Any

import yaml

from freshrec import __version__
from freshrec.features.config import SlotDtype
from freshrec.serve.predictor import CAND, USER, FeatureLayout

__all__ = ["OUTPUTS", "SERVER_METADATA", "input_datatypes", "input_name", "model_inputs",
           "model_metadata", "openapi_document"]

#: The outputs of every model: one calibrated click probability per candidate.
OUTPUTS: list[dict[str, Any]] = [{"name": "scores", "datatype": "FP32", "shape": [-1]}]

#: ``GET /v2``: the server's name, version and protocol extensions.
SERVER_METADATA: dict[str, Any] = {"name": "freshrec", "version": __version__,
                                   "extensions": []}


def input_name(side: str, key: str) -> str:
    """The v2 input name of a request field: ``user_id``/``item_id`` as they are, other
    user fields ``u_<key>``, other candidate fields ``i_<key>``.

    >>> input_name("user", "user_id"), input_name("user", "age"), input_name("candidate", "cat")
    ('user_id', 'u_age', 'i_cat')
    """
    if key in ("user_id", "item_id"):
        return key
    return ("u_" if side == USER else "i_") + key


def _shape(side: str, multi: bool) -> list[int]:
    head = [1] if side == USER else [-1]
    return head + [-1] if multi else head


def model_inputs(layout: FeatureLayout) -> list[dict[str, Any]]:
    """Every input a request may carry: the user's and candidates' slots, then dense fields
    (one per field, in the model's order; not the position, which the server fills)."""
    out: dict[str, dict[str, Any]] = {}
    for s in layout.user_slots + layout.cand_single + layout.cand_multi:
        spec = out.setdefault(input_name(s.side, s.key),
                              {"datatype": "INT64", "shape": _shape(s.side, s.multi)})
        if s.config.dtype is SlotDtype.STRING:  # a column two slots read: strings if either
            spec["datatype"] = "BYTES"
    for d in layout.user_dense + layout.cand_dense:
        if d.side in (USER, CAND) and d.key:
            out.setdefault(input_name(d.side, d.key), {"datatype": "FP32",
                                                       "shape": _shape(d.side, False)})
    return [{"name": name, **spec} for name, spec in out.items()]


_DATATYPES: weakref.WeakKeyDictionary[FeatureLayout, dict[str, str]] = \
    weakref.WeakKeyDictionary()


def input_datatypes(layout: FeatureLayout) -> dict[str, str]:
    """Each input's advertised datatype by name (computed once per layout).

    >>> from freshrec.features import feature_config_from_dict
    >>> from freshrec.serve.predictor import FeatureLayout
    >>> fc = feature_config_from_dict({"tables": {"t": {"dim": 2}}, "slots": {
    ...     "item_id": {"table": "t"}, "u_city": {"table": "t", "dtype": "string"}}})
    >>> input_datatypes(FeatureLayout(fc))
    {'u_city': 'BYTES', 'item_id': 'INT64'}
    """
    types = _DATATYPES.get(layout)
    if types is None:
        types = _DATATYPES[layout] = {t["name"]: t["datatype"] for t in model_inputs(layout)}
    return types


def model_metadata(layout: FeatureLayout | None, name: str, version: int | None
                   ) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's name, versions, inputs and outputs."""
    return {"name": name, "platform": "freshrec",
            "versions": [] if version is None else [str(version)],
            "inputs": [] if layout is None else model_inputs(layout), "outputs": OUTPUTS}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The server's HTTP API as an OpenAPI 3 document (read once from ``openapi.yaml``).

    >>> doc = openapi_document()
    >>> doc["openapi"], "/v2/models/{model_name}/versions/{model_version}/infer" in doc["paths"]
    ('3.0.3', True)
    """
    text = resources.files("freshrec.serve").joinpath("openapi.yaml").read_text("utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc
