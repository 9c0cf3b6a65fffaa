"""A property-based API fuzzer (schemathesis) driven by the server's OpenAPI document (the
Open Inference Protocol's REST routes and freshrec's own) against a real server on loopback:
schema-valid and schema-violating requests to every route never get a 5xx, every response
conforms to the document (status, content type, body schema), and every 4xx is a JSON error
object. Derandomized with a fixed number of examples, so a run is repeatable."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from freshrec.serve.v2 import openapi_document

#: Examples per generation mode (positive: schema-valid, negative: schema-violating).
EXAMPLES = 80
#: JSON schemas of the values of each advertised datatype.
_DATA = {"INT64": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
         "BYTES": {"type": "string"},
         "FP32": {"type": "number", "minimum": -3.4e38, "maximum": 3.4e38}}


def json_errors(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx is a JSON object whose ``error`` says what went wrong."""
    if 400 <= response.status_code < 500:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), \
            f"{response.status_code} without a JSON body: {response.headers}"
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], \
            body


def rejected(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-violating request is refused with a 4xx (schemathesis's check, which does not
    list 413: a generated body past the server's ``max_body_bytes`` is refused unread)."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


def _pinned(doc: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The document with the served model's name and version as the path parameters' values
    (negative cases draw others: 404s), so that generated requests reach the handlers."""
    doc = copy.deepcopy(doc)
    params = doc["components"]["parameters"]
    for key, value in (("ModelName", meta["name"]), ("ModelVersion", meta["versions"][0])):
        params[key]["schema"] = {"type": "string", "enum": [value]}
    return doc


def _scoring(doc: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The pinned document's ``POST /v2/models/{model_name}/infer`` alone, its JSON body
    built from the model metadata (``item_id`` first, then any of the model's inputs with
    values of their datatypes, one row each), so that generated requests reach scoring."""
    doc = _pinned(doc, meta)
    known = []
    for t in meta["inputs"]:
        item = _DATA[t["datatype"]]
        if len(t["shape"]) == 2:  # one row holding a list
            item = {"type": "array", "items": item, "maxItems": 4}
        known.append({"type": "object", "required": ["name", "shape", "datatype", "data"],
                      "additionalProperties": False,
                      "properties": {"name": {"enum": [t["name"]]},
                                     "datatype": {"enum": [t["datatype"]]},
                                     "shape": {"enum": [[1]]},
                                     "data": {"type": "array", "items": item,
                                              "minItems": 1, "maxItems": 1}}})
    item_id = next(k for k in known if k["properties"]["name"]["enum"] == ["item_id"])
    binary = {"type": "object", "additionalProperties": False,
              "properties": {"binary_data": {"type": "boolean"}}}
    body = {"type": "object", "required": ["inputs"], "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
                "inputs": {"type": "array", "items": [item_id], "minItems": 1, "maxItems": 5,
                           "additionalItems": {"anyOf": known}},
                "outputs": {"type": "array", "maxItems": 1, "items": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"enum": ["scores"]}, "parameters": binary}}},
                "parameters": {"type": "object", "additionalProperties": False,
                               "properties": {"binary_data_output": {"type": "boolean"}}}}}
    infer = doc["paths"]["/v2/models/{model_name}/infer"]
    infer["post"]["parameters"] = []
    infer["post"]["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": body}}}
    doc["paths"] = {"/v2/models/{model_name}/infer": infer}
    return doc


def _fuzz(schema: Any, mode: GenerationMode, checks: list[Any], url: str,
          seen: Counter[tuple[str, int]]) -> None:
    """Send ``EXAMPLES`` generated requests of ``mode`` to ``url``, each validated by ``checks``
    and :func:`json_errors`; count ``(operation, status)`` in ``seen``."""

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy(mode))
    def run(case: Any) -> None:
        response = case.call_and_validate(base_url=url, checks=checks,
                                          additional_checks=[json_errors])
        seen[(case.operation.label, response.status_code)] += 1

    run()


def test_the_openapi_document_is_served(served):
    _, client, _, _, _ = served
    r = client.get("/v2/openapi.json")
    assert r.status_code == 200 and r.json() == openapi_document()
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
            "/v2/models/{model_name}/ready", "/v2/models/{model_name}/infer",
            "/v2/models/{model_name}/versions/{model_version}/infer"} <= set(r.json()["paths"])


def test_fuzzed_requests_conform_to_the_openapi_document(served):
    server, client, _, _, _ = served
    doc, meta = client.get("/v2/openapi.json").json(), client.get("/v2/models/freshrec").json()
    schema = schemathesis.openapi.from_dict(_pinned(doc, meta))
    seen: Counter[tuple[str, int]] = Counter()
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    _fuzz(schema, GenerationMode.POSITIVE, checks, server.url, seen)
    operations = {f"{m.upper()} {p}" for p, ms in doc["paths"].items() for m in ms
                  if m != "parameters"}
    assert {label for label, _ in seen} == operations, seen
    # schema-violating requests must be refused (4xx), never accepted
    _fuzz(schema, GenerationMode.NEGATIVE, [*checks, rejected], server.url, seen)
    assert seen[("POST /score", 200)] and seen[("POST /score", 400)], seen
    assert seen[("GET /v2/models/{model_name}", 404)], seen
    # requests built from the model metadata reach scoring, in JSON and binary outputs
    scoring: Counter[tuple[str, int]] = Counter()
    _fuzz(schemathesis.openapi.from_dict(_scoring(doc, meta)), GenerationMode.POSITIVE,
          checks, server.url, scoring)
    assert scoring[("POST /v2/models/{model_name}/infer", 200)] >= EXAMPLES // 2, scoring
