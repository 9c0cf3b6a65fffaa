"""The Open Inference Protocol's binary tensor data extension.

A body whose request carries the ``Inference-Header-Content-Length: N`` header is N bytes of
JSON inference request followed by raw tensor data: each input whose ``parameters`` hold
``binary_data_size`` takes that many bytes, in the order of ``inputs``, little-endian and
row-major; a ``BYTES`` element is a 4-byte little-endian length and its UTF-8 bytes.
:func:`inline_binary` turns such a body into the plain JSON request (each binary input gets
its ``data`` list), so one parser serves both. A reply asks for it the same way
(``binary_data_output`` in the request's ``parameters``, or ``binary_data`` in an output's):
:func:`binary_reply` writes the JSON header, then the outputs' raw data.

Examples
--------
>>> import numpy as np
>>> head = orjson.dumps({"inputs": [{"name": "item_id", "shape": [2], "datatype": "INT64",
...                                  "parameters": {"binary_data_size": 16}}]})
>>> obj = inline_binary(head + np.array([7, 8], "<i8").tobytes(), len(head))
>>> obj["inputs"][0]["data"]
[7, 8]
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from freshrec.errors import brief
from freshrec.serve.request import RequestError

__all__ = ["HEADER", "binary_reply", "inline_binary"]

#: The request header that gives the JSON part's length.
HEADER = "Inference-Header-Content-Length"

def binary_reply(head: dict[str, Any], data: list[np.ndarray]) -> tuple[bytes, int]:
    """A binary-extension reply body and its JSON part's length: ``head["outputs"][i]`` gets
    ``parameters.binary_data_size`` and loses ``data``; ``data[i]`` follows the JSON,
    little-endian row-major.

    >>> body, n = binary_reply({"outputs": [{"name": "scores", "datatype": "FP32",
    ...                                      "shape": [2]}]}, [np.array([0.5, 1.0], "<f4")])
    >>> orjson.loads(body[:n])["outputs"][0]["parameters"], np.frombuffer(body[n:], "<f4")
    ({'binary_data_size': 8}, array([0.5, 1. ], dtype=float32))
    """
    raw = [np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes() for a in data]
    outputs = [{**{k: v for k, v in o.items() if k != "data"},
                "parameters": {**o.get("parameters", {}), "binary_data_size": len(r)}}
               for o, r in zip(head["outputs"], raw, strict=True)]
    js = orjson.dumps({**head, "outputs": outputs})
    return js + b"".join(raw), len(js)


_NUMPY = {"BOOL": "?", "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
          "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2",
          "FP32": "<f4", "FP64": "<f8"}


def _strings(raw: bytes, where: str) -> list[str]:
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise RequestError(where, "BYTES element cut short (a 4-byte length is missing)")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise RequestError(where, f"BYTES element of {n} bytes runs past the data")
        try:
            out.append(raw[at + 4:at + 4 + n].decode())
        except UnicodeDecodeError as e:
            raise RequestError(where, f"BYTES element is not UTF-8 ({e})") from e
        at += 4 + n
    return out


def _decode(raw: bytes, datatype: Any, where: str) -> list[Any]:
    if datatype == "BYTES":
        return _strings(raw, where)
    dtype = _NUMPY.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise RequestError(where, f"binary data of datatype {brief(datatype)}: must be one of "
                                  f"BYTES, {', '.join(_NUMPY)}")
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise RequestError(where, f"{len(raw)} bytes is not a whole number of {datatype}")
    return list(np.frombuffer(raw, dtype).tolist())


def inline_binary(body: bytes, json_length: int) -> Any:
    """The JSON request of a binary-extension body, each binary input's ``data`` filled in.

    Raises
    ------
    RequestError
        A JSON part that is not JSON or runs past the body, a ``binary_data_size`` that is not
        a size or runs past the data, data that is not whole elements of the datatype, or
        bytes left over (each names the input).
    """
    if not 0 <= json_length <= len(body):
        raise RequestError(HEADER, f"must be within the body's "
                           f"{len(body)} bytes, got {json_length}")
    try:
        obj = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as e:
        raise RequestError("body", f"JSON part is not valid JSON ({e})") from e
    inputs = obj.get("inputs") if type(obj) is dict else None
    at = json_length
    for i, t in enumerate(inputs if type(inputs) is list else []):
        params = t.get("parameters") if type(t) is dict else None
        size = params.get("binary_data_size") if type(params) is dict else None
        if size is None:
            continue
        where = f"inputs[{i}].parameters.binary_data_size"
        if type(size) is not int or size < 0 or at + size > len(body):
            raise RequestError(where, f"must be a size within the {len(body) - at} bytes "
                                      f"left, got {brief(size)}")
        t["data"] = _decode(body[at:at + size], t.get("datatype"), f"inputs[{i}].data")
        at += size
    if at != len(body):
        raise RequestError("body", f"{len(body) - at} bytes after the last binary input")
    return obj
