"""A real Open Inference Protocol client (tritonclient's HTTP client) against a real server
on loopback: it builds its request from the model metadata alone, in its default binary mode
(binary inputs and outputs) and in JSON mode, and gets the scores of ``POST /score``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tests.serve.test_v2 import _full_body, _tensor


def triton_inputs(meta: dict[str, Any], body: dict[str, Any],
                  binary: bool) -> list[tc.InferInput]:
    """tritonclient inputs for the ``/score`` body ``body``, built from the model metadata."""
    inputs = []
    for spec in meta["inputs"]:
        t = _tensor(spec, body)
        x = tc.InferInput(t["name"], t["shape"], t["datatype"])
        x.set_data_from_numpy(np.array(t["data"], triton_to_np_dtype(t["datatype"]))
                              .reshape(t["shape"]), binary_data=binary)
        inputs.append(x)
    return inputs


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_from_metadata_scores_as_score(served, binary):
    server, client, _, _, _ = served
    triton = tc.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert triton.is_server_live() and triton.is_server_ready()
        assert triton.is_model_ready("freshrec")
        meta = triton.get_model_metadata("freshrec")
        body = _full_body(11)
        inputs = triton_inputs(meta, body, binary)
        outputs = [tc.InferRequestedOutput(o["name"], binary_data=binary)
                   for o in meta["outputs"]]
        result = triton.infer("freshrec", inputs, outputs=outputs, request_id="t1",
                              model_version=meta["versions"][0])
        scores = result.as_numpy("scores")
        assert scores.dtype == np.float32 and scores.shape == (len(body["candidates"]),)
        assert result.get_response()["model_version"] == meta["versions"][0]
        plain = client.post("/score", json=body).json()["scores"]
        np.testing.assert_allclose(scores, plain, rtol=1e-6)
        # with no outputs named the client asks for binary outputs by default
        default = triton.infer("freshrec", inputs).as_numpy("scores")
        np.testing.assert_allclose(default, plain, rtol=1e-6)
        # an unknown model is an error the client can read (a JSON error object)
        with pytest.raises(InferenceServerException, match="not found"):
            triton.get_model_metadata("other")
    finally:
        triton.close()
