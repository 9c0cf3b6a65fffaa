"""The dense engines compute the regrouped model's logits, on torch and on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.errors import ConfigError
from freshrec.serve import ServeConfig
from freshrec.serve.engine import FusedLayers, OnnxDense, TorchDense, dense_engine


def _modules(n_in: int, hidden: int, rest: list[torch.nn.Module], seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Linear(n_in, hidden), torch.nn.Linear(n_in, 1), rest


def _reference(first, wide, rest, x: torch.Tensor) -> np.ndarray:
    """The unfused model: wide(x) + mlp(x), over the full input."""
    with torch.no_grad():
        return (wide(x).squeeze(1) + torch.nn.Sequential(first, *rest)(x).squeeze(1)).numpy()


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("n_user", [0, 3])
def test_engine_equals_the_unfused_model(engine, n, n_user):
    n_in, hidden = 11, 16
    rest = [torch.nn.ReLU(), torch.nn.Linear(hidden, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5),
            torch.nn.Linear(8, 1)]
    first, wide, rest = _modules(n_in, hidden, rest, seed=n)
    for m in rest:
        m.eval()
    rng = np.random.default_rng(n)
    perm = rng.permutation(n_in)  # user and candidate columns interleaved in the input
    ucols, ccols = sorted(perm[:n_user]), sorted(perm[n_user:])
    xu = rng.normal(size=(1, n_user)).astype(np.float32)
    xc = rng.normal(size=(n, n_in - n_user)).astype(np.float32)
    x = np.empty((n, n_in), np.float32)
    x[:, ucols] = xu
    x[:, ccols] = xc
    fused = FusedLayers.from_modules(first, wide, rest, ucols, ccols)
    eng = dense_engine(fused, engine)
    assert eng.name == engine
    got = eng(xu, xc)
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(first, wide, rest, torch.from_numpy(x)),
                               rtol=1e-5, atol=1e-5)


def test_auto_prefers_onnxruntime_and_falls_back_to_torch_for_other_layers():
    first, wide, rest = _modules(4, 5, [torch.nn.ReLU(), torch.nn.Linear(5, 1)])
    assert isinstance(dense_engine(FusedLayers.from_modules(first, wide, rest, [0], [1, 2, 3])),
                      OnnxDense)
    odd = FusedLayers.from_modules(first, wide, [torch.nn.Tanh(), torch.nn.Linear(5, 1)], [0],
                                   [1, 2, 3])
    eng = dense_engine(odd)
    assert isinstance(eng, TorchDense)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(eng(x[:1, :1], x[:, 1:]),
                               _reference(first, wide, [torch.nn.Tanh(), odd.rest[1]],
                                          torch.from_numpy(x)), rtol=1e-6)
    with pytest.raises(ConfigError, match="layer other than Linear/ReLU"):
        dense_engine(odd, "onnxruntime")


def test_bad_engine_names_are_errors():
    first, wide, rest = _modules(2, 3, [])
    fused = FusedLayers.from_modules(first, wide, rest, [0], [1])
    with pytest.raises(ConfigError, match="expected one of"):
        dense_engine(fused, "tensorrt")
    with pytest.raises(ConfigError, match="engine"):
        ServeConfig(engine="tensorrt")
    with pytest.raises(ConfigError, match="no candidate-side input"):
        OnnxDense(FusedLayers.from_modules(first, wide, rest, [0, 1], []))
