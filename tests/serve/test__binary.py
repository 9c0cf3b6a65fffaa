"""The binary tensor data extension's decoding: every datatype, and bodies that lie."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from freshrec.serve._binary import inline_binary
from freshrec.serve.request import RequestError


def _body(inputs: list[dict], raw: bytes) -> tuple[bytes, int]:
    head = orjson.dumps({"inputs": inputs})
    return head + raw, len(head)


def _t(datatype: str, size: int) -> dict:
    return {"name": "x", "shape": [2], "datatype": datatype,
            "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize("datatype, dtype", [("INT64", "<i8"), ("INT32", "<i4"),
                                             ("FP32", "<f4"), ("FP64", "<f8"), ("UINT8", "u1")])
def test_numbers_decode_little_endian(datatype, dtype):
    raw = np.array([3, 5], dtype).tobytes()
    obj = inline_binary(*_body([_t(datatype, len(raw))], raw))
    assert obj["inputs"][0]["data"] == [3, 5]


def test_bytes_are_length_prefixed_strings_and_inputs_take_their_bytes_in_order():
    words = b"".join(struct.pack("<I", len(w)) + w for w in (b"red", b""))
    nums = np.array([1, 2], "<i8").tobytes()
    obj = inline_binary(*_body([_t("BYTES", len(words)), {"name": "j", "shape": [1],
                                "datatype": "INT64", "data": [9]}, _t("INT64", 16)],
                               words + nums))
    assert [t["data"] for t in obj["inputs"]] == [["red", ""], [9], [1, 2]]


@pytest.mark.parametrize("inputs, raw, field", [
    ([_t("INT64", 16)], b"\0" * 8, "inputs[0].parameters.binary_data_size"),
    ([_t("INT64", 12)], b"\0" * 12, "inputs[0].data"),
    ([_t("BOGUS", 8)], b"\0" * 8, "inputs[0].data"),
    ([_t("BYTES", 6)], struct.pack("<I", 9) + b"ab", "inputs[0].data"),
    ([_t("INT64", 8)], b"\0" * 9, "body"),
])
def test_a_body_that_lies_is_refused_naming_the_field(inputs, raw, field):
    with pytest.raises(RequestError) as e:
        inline_binary(*_body(inputs, raw))
    assert e.value.field == field


def test_a_json_length_past_the_body_is_refused():
    with pytest.raises(RequestError, match="Inference-Header-Content-Length"):
        inline_binary(b"{}", 3)
