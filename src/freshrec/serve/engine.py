"""What runs a served model's dense part: its serving split, on torch or on ONNX Runtime.

Every model regroups its arithmetic around the user/candidate split of its input
(:meth:`~freshrec.models.CTRModel.serving_split`, :mod:`freshrec.models.split`): a user block
applied once per request, a candidate block applied in one GEMM over the candidates with the
user row as its bias, and an interaction written against a handful of array operations. Two
engines run a :class:`~freshrec.models.split.ServingSplit`, knowing no model class:

* :class:`TorchDense` -- the split evaluated by :data:`~freshrec.models.split.TORCH_OPS`
  (``addmm`` and in-place ReLU steps with pre-transposed weights, no module dispatch).
* :class:`OnnxDense` -- the same calls recorded once per dense version as an ONNX graph
  (:class:`OnnxOps`: ``Gemm``/``Relu``/``Slice``/``Add``/``Mul``/``Concat``...) and run by
  ONNX Runtime's CPU provider with ``intra_op_num_threads`` = torch's thread count and no
  spinning (a spinning worker steals the second core on a 2-core machine). Measured 1.3x
  faster than the torch path for the write-up's model (docs/serving.md), so ``"auto"``
  picks it when ``onnxruntime`` and ``onnx`` are installed (the ``serve`` extra) and the
  split exports (a layer that only torch runs, :meth:`~freshrec.models.split.Ops.call`,
  does not).

Both return float32 logits (before the negative-sampling correction) equal to the model's
own to float32 rounding (tests/serve/test_engine.py, for every model).

Examples
--------
>>> import numpy as np, torch
>>> from freshrec.models import ModelConfig, build_model
>>> class Emb:  # any embedder: 2 slots of dim 2
...     slot_names, dim = ["user", "item"], 2
>>> model = build_model(ModelConfig(kind="deepfm", mlp=[4]), Emb(), n_dense=1)
>>> split = model.serving_split(user_cols=[0, 1], cand_cols=[2, 3, 4])
>>> eng = dense_engine(split, "torch")
>>> eng(np.ones((1, 2), np.float32), np.ones((3, 3), np.float32)).shape
(3,)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from freshrec.errors import ConfigError
from freshrec.models.split import ServingSplit
from freshrec.serve.config import ENGINES

__all__ = ["ENGINES", "OnnxDense", "OnnxOps", "TorchDense", "dense_engine",
           "onnxruntime_available"]

log = logging.getLogger(__name__)


class TorchDense:
    """A serving split on torch (see the module docstring)."""

    name = "torch"

    def __init__(self, split: ServingSplit) -> None:
        self.split = split

    def __call__(self, xu: npt.NDArray[np.float32], xc: npt.NDArray[np.float32]
                 ) -> npt.NDArray[np.float32]:
        """Logits (n,) for the user row ``xu`` (1, in_u) and candidate rows ``xc`` (n, in_c)."""
        with torch.inference_mode():
            return self.split(torch.from_numpy(xu), torch.from_numpy(xc)).numpy()


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` import (the ``serve`` extra installs both)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class NotExportable(Exception):
    """The split holds a layer ONNX export does not know (the message says which)."""


class OnnxOps:
    """:class:`~freshrec.models.split.Ops` recorded as ONNX nodes: values are tensor names,
    constant tensors become initializers (see :meth:`graph`).

    >>> ops = OnnxOps()
    >>> y = ops.relu(ops.gemm("x", torch.ones(3, 2), torch.zeros(2)))
    >>> [n.op_type for n in ops.nodes], len(ops.initializers)
    (['Gemm', 'Relu'], 2)
    """

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._consts: dict[int, str] = {}  # id(tensor) -> name: a weight is stored once
        self._kept: list[torch.Tensor] = []  # keeps the ids above unique

    def _name(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes) + len(self.initializers)}"

    def _value(self, x: str | torch.Tensor) -> str:
        if isinstance(x, str):
            return x
        if id(x) not in self._consts:
            name = self._name("c")
            self.initializers.append(self._numpy_helper.from_array(
                x.detach().numpy().astype(np.float32), name))
            self._consts[id(x)] = name
            self._kept.append(x)
        return self._consts[id(x)]

    def _ints(self, values: Sequence[int]) -> str:
        name = self._name("i")
        self.initializers.append(self._numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def _node(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self._name(op.lower())
        self.nodes.append(self._helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def gemm(self, x: str, w: torch.Tensor, bias: str | torch.Tensor | None = None) -> str:
        args = [x, self._value(w)] + ([] if bias is None else [self._value(bias)])
        return self._node("Gemm", args)

    def relu(self, x: str, *, owned: bool = False) -> str:
        return self._node("Relu", [x])

    def cols(self, x: str, start: int, stop: int) -> str:
        return self._node("Slice", [x, self._ints([start]), self._ints([stop]), self._ints([1])])

    def add(self, a: str | torch.Tensor, b: str | torch.Tensor) -> str:
        return self._node("Add", [self._value(a), self._value(b)])

    def sub(self, a: str | torch.Tensor, b: str | torch.Tensor) -> str:
        return self._node("Sub", [self._value(a), self._value(b)])

    def mul(self, a: str | torch.Tensor, b: str | torch.Tensor) -> str:
        return self._node("Mul", [self._value(a), self._value(b)])

    def concat(self, xs: Sequence[str]) -> str:
        return self._node("Concat", list(xs), axis=1)

    def expand_rows(self, x: str, like: str) -> str:
        rows = self._node("Slice", [self._node("Shape", [like]), self._ints([0]),
                                    self._ints([1]), self._ints([0])])
        shape = self._node("Concat", [rows, self._ints([1])], axis=0)
        return self._node("Expand", [x, shape])  # (1, k) broadcast against (n, 1)

    def flatten(self, x: str) -> str:
        return self._node("Reshape", [x, self._ints([-1])])

    def call(self, module: torch.nn.Module, x: str) -> str:
        raise NotExportable(f"the model's layer {module!r:.80} has no ONNX export")

    def graph(self, split: ServingSplit) -> bytes:
        """The serialized ONNX model of ``split``: inputs ``xu`` (1, in_u), ``xc`` (n, in_c);
        output ``logit`` (n,).

        Raises
        ------
        NotExportable
            The split holds a layer only torch runs.
        """
        helper, proto = self._helper, _tensor_proto()
        out = split.logits(self, "xu", "xc")
        self.nodes.append(helper.make_node("Identity", [out], ["logit"]))
        inputs = [helper.make_tensor_value_info("xu", proto.FLOAT, [1, split.user.shape[0]]),
                  helper.make_tensor_value_info("xc", proto.FLOAT, ["n", split.cand.shape[0]])]
        graph = helper.make_graph(
            self.nodes, "freshrec_dense", inputs,
            [helper.make_tensor_value_info("logit", proto.FLOAT, ["n"])], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  producer_name="freshrec")
        model.ir_version = 8  # readable by every onnxruntime that knows opset 17
        return bytes(model.SerializeToString())


def _tensor_proto() -> Any:
    from onnx import TensorProto

    return TensorProto


class OnnxDense:
    """A serving split on ONNX Runtime (see the module docstring).

    Raises
    ------
    ConfigError
        The split holds a layer ONNX export does not know, or there are no candidate-side
        inputs.
    """

    name = "onnxruntime"

    def __init__(self, split: ServingSplit, threads: int = 1) -> None:
        import onnxruntime as ort

        graph = _onnx_graph(split)
        if isinstance(graph, str):
            raise ConfigError(f"serve engine 'onnxruntime': {graph}; use engine 'torch'")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    def __call__(self, xu: npt.NDArray[np.float32], xc: npt.NDArray[np.float32]
                 ) -> npt.NDArray[np.float32]:
        """Logits (n,) for the user row ``xu`` (1, in_u) and candidate rows ``xc`` (n, in_c)."""
        return self.session.run(None, {"xu": xu, "xc": xc})[0]


def _onnx_graph(split: ServingSplit) -> bytes | str:
    """The ONNX model of ``split``, or why there is none."""
    if split.cand.shape[0] == 0:
        return "the model has no candidate-side input"
    try:
        return OnnxOps().graph(split)
    except NotExportable as e:
        return str(e)


def dense_engine(split: ServingSplit, engine: str = "auto", threads: int | None = None
                 ) -> TorchDense | OnnxDense:
    """The engine ``engine`` (``"auto"``, ``"torch"`` or ``"onnxruntime"``) over ``split``.

    ``"auto"``: ONNX Runtime when it is installed and the split exports, torch otherwise.
    ``threads``: intra-op threads of ONNX Runtime (default: ``torch.get_num_threads()``).

    Raises
    ------
    ConfigError
        An unknown engine, or ``"onnxruntime"`` when it is not installed or cannot run the
        split (the message says why).
    """
    if engine not in ENGINES:
        raise ConfigError(f"serve engine: expected one of {list(ENGINES)}, got {engine!r}")
    n = torch.get_num_threads() if threads is None else threads
    if engine == "torch":
        return TorchDense(split)
    if engine == "onnxruntime":
        if not onnxruntime_available():
            raise ConfigError("serve engine 'onnxruntime': onnxruntime and onnx are not "
                              "installed (pip install 'freshrec[serve]')")
        return OnnxDense(split, n)
    if onnxruntime_available():
        try:
            return OnnxDense(split, n)
        except ConfigError as e:
            log.info("serve engine auto: torch (%s)", e)
    return TorchDense(split)
