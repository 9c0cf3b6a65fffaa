"""The dense engines run every model's serving split, on torch and on ONNX Runtime, equal to
the model's own logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.errors import ConfigError
from freshrec.models import CTRModel, ModelConfig, build_model
from freshrec.serve import ServeConfig
from freshrec.serve.engine import OnnxDense, TorchDense, dense_engine

KINDS = ["wide_deep", "deepfm", "dcn_v2"]


class _Shape:
    """Stands in for an embedder: F slots of dim D (the engines never embed)."""

    def __init__(self, slots: int, dim: int) -> None:
        self.slot_names = [f"s{i}" for i in range(slots)]
        self.dim = dim


class _Bilinear(CTRModel):
    """A model without a serving split of its own (the default: the whole input per request)."""

    def __init__(self, embedding, n_dense: int) -> None:
        super().__init__(embedding, n_dense)
        self.w = torch.nn.Bilinear(self.in_dim, self.in_dim, 1)

    def interact(self, emb, dense):
        x = torch.cat([emb.flatten(1), dense], 1)
        return self.w(x, x).squeeze(1)


def _model(kind: str, seed: int, cross_layers: int = 2) -> CTRModel:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(kind=kind, mlp=[16, 8], dropout=0.5,
                                    cross_layers=cross_layers), _Shape(3, 4), n_dense=2)
    for p in model.parameters():  # DCN's cross layers start at zero: make them count
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def _inputs(model: CTRModel, n: int, n_user: int, seed: int):
    """A user row and candidate rows, their columns interleaved in the model's flat input,
    and that flat input."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(model.in_dim)
    ucols, ccols = sorted(perm[:n_user].tolist()), sorted(perm[n_user:].tolist())
    xu = rng.normal(size=(1, n_user)).astype(np.float32)
    xc = rng.normal(size=(n, model.in_dim - n_user)).astype(np.float32)
    x = np.empty((n, model.in_dim), np.float32)
    x[:, ucols] = xu
    x[:, ccols] = xc
    return ucols, ccols, xu, xc, torch.from_numpy(x)


def _reference(model: CTRModel, x: torch.Tensor) -> np.ndarray:
    fd = model.n_slots * model.dim
    with torch.no_grad():
        return model.interact(x[:, :fd].reshape(-1, model.n_slots, model.dim), x[:, fd:]).numpy()


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("n_user", [0, 5])
def test_engine_equals_the_model(engine, kind, n, n_user):
    model = _model(kind, seed=n)
    ucols, ccols, xu, xc, x = _inputs(model, n, n_user, seed=n)
    eng = dense_engine(model.serving_split(ucols, ccols), engine)
    assert eng.name == engine
    got = eng(xu, xc)
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_dcn_without_cross_layers_is_its_mlp(engine):
    model = _model("dcn_v2", seed=3, cross_layers=0)
    ucols, ccols, xu, xc, x = _inputs(model, 9, 4, seed=3)
    np.testing.assert_allclose(dense_engine(model.serving_split(ucols, ccols), engine)(xu, xc),
                               _reference(model, x), rtol=1e-4, atol=1e-4)


def test_auto_prefers_onnxruntime_and_falls_back_to_torch_for_the_default_split():
    model = _model("wide_deep", seed=0)
    ucols, ccols, xu, xc, x = _inputs(model, 4, 3, seed=0)
    assert isinstance(dense_engine(model.serving_split(ucols, ccols)), OnnxDense)
    torch.manual_seed(0)
    odd = _Bilinear(_Shape(3, 4), n_dense=2).eval()
    eng = dense_engine(odd.serving_split(ucols, ccols))
    assert isinstance(eng, TorchDense)
    np.testing.assert_allclose(eng(xu, xc), _reference(odd, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="_Bilinear.interact .* has no ONNX export"):
        dense_engine(odd.serving_split(ucols, ccols), "onnxruntime")


def test_bad_engine_names_are_errors():
    model = _model("deepfm", seed=0)
    split = model.serving_split([0], list(range(1, model.in_dim)))
    with pytest.raises(ConfigError, match="expected one of"):
        dense_engine(split, "tensorrt")
    with pytest.raises(ConfigError, match="engine"):
        ServeConfig(engine="tensorrt")
    with pytest.raises(ConfigError, match="no candidate-side input"):
        OnnxDense(model.serving_split(list(range(model.in_dim)), []))
