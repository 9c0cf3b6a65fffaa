"""The dense part of a served Wide & Deep / DeepFM model: the fused first layer and the MLP.

The predictor regroups the model's first layer (the MLP's first ``Linear`` stacked with the
wide/linear unit) into a user block ``wu`` (applied once per request) and a candidate block
``wc`` (applied to every candidate), see :mod:`freshrec.serve.predictor`. What follows is
the same for every request: ``h = xc @ wc + (xu @ wu + b)``, the rest of the MLP on
``h[:, :H]``, and the logit ``h[:, H] + mlp(h[:, :H])``. Two engines run it:

* :class:`TorchDense` -- ``addmm`` and in-place ReLU steps with pre-transposed weights (no
  module dispatch); runs any MLP (other layer kinds through the modules themselves).
* :class:`OnnxDense` -- the same graph built once per dense version as an ONNX model
  (``Gemm``/``Relu``/``Slice``/``Add``) and run by ONNX Runtime's CPU provider with
  ``intra_op_num_threads`` = torch's thread count and no spinning (a spinning worker steals
  the second core on a 2-core machine). Measured 1.3x faster than the torch path for the
  write-up's model (docs/serving.md), so ``"auto"`` picks it when ``onnxruntime`` and
  ``onnx`` are installed (the ``serve`` extra) and the MLP is made of ``Linear`` and
  ``ReLU`` only.

Both return float32 logits (before the negative-sampling correction) equal to the model's
own to float32 rounding (tests/serve/test_engine.py).

Examples
--------
>>> import numpy as np, torch
>>> fused = FusedLayers.from_modules(torch.nn.Linear(6, 4), torch.nn.Linear(6, 1),
...                                  [torch.nn.ReLU(), torch.nn.Linear(4, 1)], [0, 1], [2, 3, 4, 5])
>>> eng = dense_engine(fused, "torch")
>>> eng(np.ones((1, 2), np.float32), np.ones((3, 4), np.float32)).shape
(3,)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from freshrec.errors import ConfigError

__all__ = ["ENGINES", "FusedLayers", "OnnxDense", "TorchDense", "compile_mlp", "dense_engine",
           "onnxruntime_available"]

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime")

MlpOps = list[tuple[torch.Tensor | None, torch.Tensor | None]]


def compile_mlp(layers: Sequence[torch.nn.Module]) -> MlpOps | None:
    """The layers as ``(W^T, b)`` steps (``(None, None)``: ReLU); ``None`` when they hold
    another kind of layer (then the modules themselves run). Dropout and Identity are
    skipped (identities in eval mode).

    >>> ops = compile_mlp([torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Dropout()])
    >>> [None if w is None else tuple(w.shape) for w, _ in ops]
    [(3, 2), None]
    >>> compile_mlp([torch.nn.Tanh()]) is None
    True
    """
    ops: MlpOps = []
    for layer in layers:
        if type(layer) is torch.nn.Linear:
            with torch.no_grad():
                ops.append((layer.weight.detach().t().contiguous(),
                            None if layer.bias is None else layer.bias.detach().clone()))
        elif type(layer) is torch.nn.ReLU:
            ops.append((None, None))
        elif type(layer) in (torch.nn.Dropout, torch.nn.Identity):
            continue
        else:
            return None
    return ops


def _run_ops(ops: MlpOps, x: torch.Tensor) -> torch.Tensor:
    owned = False  # x may be a view of the caller's tensor until the first op writes anew
    for w, b in ops:
        if w is None:
            if owned:
                x.relu_()
            else:
                x = torch.relu(x)
                owned = True
        else:
            x = torch.mm(x, w) if b is None else torch.addmm(b, x, w)
            owned = True
    return x


@dataclass(frozen=True)
class FusedLayers:
    """The fused first layer and the rest of the MLP, as the engines take them.

    ``wu`` (in_u, H + 1) and ``wc`` (in_c, H + 1) are the stacked first-layer weights split
    by input column (hidden units first, the wide unit last), ``b`` (H + 1,) their biases,
    ``rest`` the MLP after its first layer and ``ops`` its :func:`compile_mlp` form.
    """

    wu: torch.Tensor
    wc: torch.Tensor
    b: torch.Tensor
    hidden: int
    rest: torch.nn.Sequential
    ops: MlpOps | None

    @classmethod
    def from_modules(cls, first: torch.nn.Linear, wide: torch.nn.Linear,
                     rest: Sequence[torch.nn.Module], ucols: Sequence[int],
                     ccols: Sequence[int]) -> FusedLayers:
        """Stack ``first`` (the MLP's first layer) and ``wide`` (one output unit), split the
        columns into the user block ``ucols`` and the candidate block ``ccols``."""
        with torch.no_grad():
            w = torch.cat([first.weight, wide.weight]).detach()
            b = torch.cat([first.bias, wide.bias]).detach().clone()
            wu = w[:, list(ucols)].t().contiguous()
            wc = w[:, list(ccols)].t().contiguous()
        seq = torch.nn.Sequential(*rest).eval()
        return cls(wu, wc, b, int(first.out_features), seq, compile_mlp(list(rest)))


class TorchDense:
    """The dense part on torch (see the module docstring)."""

    name = "torch"

    def __init__(self, fused: FusedLayers) -> None:
        self.fused = fused

    def __call__(self, xu: npt.NDArray[np.float32], xc: npt.NDArray[np.float32]
                 ) -> npt.NDArray[np.float32]:
        """Logits (n,) for the user row ``xu`` (1, in_u) and candidate rows ``xc`` (n, in_c)."""
        f = self.fused
        with torch.inference_mode():
            h = torch.addmm(torch.addmm(f.b, torch.from_numpy(xu), f.wu), torch.from_numpy(xc),
                            f.wc)
            hid = h[:, :f.hidden]
            deep = _run_ops(f.ops, hid) if f.ops is not None else f.rest(hid)
            return (h[:, f.hidden] + deep.squeeze(1)).numpy()


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` import (the ``serve`` extra installs both)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxDense:
    """The dense part on ONNX Runtime (see the module docstring).

    Raises
    ------
    ConfigError
        The MLP holds a layer other than ``Linear``/``ReLU``/``Dropout``/``Identity``, or
        there are no candidate-side inputs.
    """

    name = "onnxruntime"

    def __init__(self, fused: FusedLayers, threads: int = 1) -> None:
        import onnxruntime as ort

        why = _onnx_unsupported(fused)
        if why is not None:
            raise ConfigError(f"serve engine 'onnxruntime': {why}; use engine 'torch'")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(_onnx_graph(fused), opts,
                                            providers=["CPUExecutionProvider"])
        self._uses_xu = fused.wu.shape[0] > 0

    def __call__(self, xu: npt.NDArray[np.float32], xc: npt.NDArray[np.float32]
                 ) -> npt.NDArray[np.float32]:
        """Logits (n,) for the user row ``xu`` (1, in_u) and candidate rows ``xc`` (n, in_c)."""
        feeds = {"xc": xc, "xu": xu} if self._uses_xu else {"xc": xc}
        return self.session.run(None, feeds)[0]


def _onnx_unsupported(fused: FusedLayers) -> str | None:
    """Why :class:`OnnxDense` cannot run ``fused`` (``None``: it can)."""
    if fused.ops is None:
        return "the model's MLP holds a layer other than Linear/ReLU"
    if fused.wc.shape[0] == 0:
        return "the model has no candidate-side input"
    return None


def _onnx_graph(fused: FusedLayers) -> bytes:
    """The serialized ONNX model: inputs ``xu`` (1, in_u), ``xc`` (n, in_c); output
    ``logit`` (n,)."""
    from onnx import TensorProto, helper, numpy_helper

    hid = fused.hidden
    inits = {"b": fused.b, "wc": fused.wc}
    nodes = []
    inputs = [helper.make_tensor_value_info("xc", TensorProto.FLOAT, ["n", fused.wc.shape[0]])]
    if fused.wu.shape[0] > 0:
        inits["wu"] = fused.wu
        inputs.append(helper.make_tensor_value_info("xu", TensorProto.FLOAT,
                                                    [1, fused.wu.shape[0]]))
        nodes.append(helper.make_node("Gemm", ["xu", "wu", "b"], ["hu"]))
        bias = "hu"
    else:
        bias = "b"
    nodes.append(helper.make_node("Gemm", ["xc", "wc", bias], ["h"]))
    consts = {"zero": [0], "hid": [hid], "hid1": [hid + 1], "axis1": [1], "flat": [-1]}
    nodes.append(helper.make_node("Slice", ["h", "zero", "hid", "axis1"], ["x0"]))
    nodes.append(helper.make_node("Slice", ["h", "hid", "hid1", "axis1"], ["wide"]))
    x = "x0"
    for k, (w, b) in enumerate(fused.ops or []):
        out = f"x{k + 1}"
        if w is None:
            nodes.append(helper.make_node("Relu", [x], [out]))
        else:
            inits[f"w{k}"] = w
            args = [x, f"w{k}"]
            if b is not None:
                inits[f"b{k}"] = b
                args.append(f"b{k}")
            nodes.append(helper.make_node("Gemm", args, [out]))
        x = out
    nodes.append(helper.make_node("Add", [x, "wide"], ["sum"]))
    nodes.append(helper.make_node("Reshape", ["sum", "flat"], ["logit"]))
    tensors = [numpy_helper.from_array(t.detach().numpy().astype(np.float32), name)
               for name, t in inits.items()]
    tensors += [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in consts.items()]
    graph = helper.make_graph(
        nodes, "freshrec_dense", inputs,
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n"])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="freshrec")
    model.ir_version = 8  # readable by every onnxruntime that knows opset 17
    return model.SerializeToString()


def dense_engine(fused: FusedLayers, engine: str = "auto", threads: int | None = None
                 ) -> TorchDense | OnnxDense:
    """The engine ``engine`` (``"auto"``, ``"torch"`` or ``"onnxruntime"``) over ``fused``.

    ``"auto"``: ONNX Runtime when it is installed and can run the MLP, torch otherwise.
    ``threads``: intra-op threads of ONNX Runtime (default: ``torch.get_num_threads()``).

    Raises
    ------
    ConfigError
        An unknown engine, or ``"onnxruntime"`` when it is not installed or cannot run the
        model (the message says why).
    """
    if engine not in ENGINES:
        raise ConfigError(f"serve engine: expected one of {list(ENGINES)}, got {engine!r}")
    n = torch.get_num_threads() if threads is None else threads
    if engine == "torch":
        return TorchDense(fused)
    if engine == "onnxruntime":
        if not onnxruntime_available():
            raise ConfigError("serve engine 'onnxruntime': onnxruntime and onnx are not "
                              "installed (pip install 'freshrec[serve]')")
        return OnnxDense(fused, n)
    if onnxruntime_available() and _onnx_unsupported(fused) is None:
        return OnnxDense(fused, n)
    return TorchDense(fused)
