"""Every model's serving split equals its own forward, for any user/candidate column split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.errors import InputError
from freshrec.models import CTRModel, ModelConfig, build_model, flat_input
from freshrec.models.split import MlpTail, serving_order


class _Shape:
    """Stands in for an embedder: F slots of dim D (a split never embeds)."""

    def __init__(self, slots: int = 4, dim: int = 3) -> None:
        self.slot_names = [f"s{i}" for i in range(slots)]
        self.dim = dim


class _Gated(CTRModel):
    """A model without a serving split of its own: the default one serves it."""

    def __init__(self, embedding, n_dense: int) -> None:
        super().__init__(embedding, n_dense)
        self.gate = torch.nn.Linear(self.in_dim, self.in_dim)
        self.out = torch.nn.Linear(self.in_dim, 1)

    def interact(self, emb, dense):
        x = flat_input(emb, dense)
        return self.out(x * torch.sigmoid(self.gate(x))).squeeze(1)


MODELS = {
    "wide_deep": lambda: build_model(ModelConfig(kind="wide_deep", mlp=[8, 4], dropout=0.3),
                                     _Shape(), 2),
    "deepfm": lambda: build_model(ModelConfig(kind="deepfm", mlp=[8, 4]), _Shape(), 2),
    "deepfm_no_hidden": lambda: build_model(ModelConfig(kind="deepfm", mlp=[]), _Shape(), 2),
    "dcn_v2": lambda: build_model(ModelConfig(kind="dcn_v2", mlp=[8], cross_layers=3),
                                  _Shape(), 2),
    "dcn_v2_no_cross": lambda: build_model(ModelConfig(kind="dcn_v2", mlp=[8], cross_layers=0),
                                           _Shape(), 2),
    "default": lambda: _Gated(_Shape(), 2),
}


def _random(name: str) -> CTRModel:
    torch.manual_seed(0)
    model = MODELS[name]()
    for p in model.parameters():  # cross layers start at zero: make them count
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def _forward(model: CTRModel, x: torch.Tensor) -> torch.Tensor:
    fd = model.n_slots * model.dim
    return model.interact(x[:, :fd].reshape(-1, model.n_slots, model.dim), x[:, fd:])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n_user", [0, 1, 7, 14])
@pytest.mark.parametrize("n", [1, 5])
def test_split_equals_the_model(name, n_user, n):
    model = _random(name)
    rng = np.random.default_rng(n_user)
    perm = rng.permutation(model.in_dim).tolist()  # the user's columns anywhere, any order
    ucols, ccols = perm[:n_user], perm[n_user:]
    xu, xc = torch.randn(1, n_user), torch.randn(n, model.in_dim - n_user)
    x = torch.empty(n, model.in_dim)
    x[:, ucols] = xu
    x[:, ccols] = xc
    with torch.no_grad():
        torch.testing.assert_close(model.serving_split(ucols, ccols)(xu, xc), _forward(model, x),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["wide_deep", "deepfm", "dcn_v2"])
def test_a_split_holds_the_weights_it_was_made_with(name):
    model = _random(name)
    split = model.serving_split([0, 1], list(range(2, model.in_dim)))
    xu, xc = torch.randn(1, 2), torch.randn(3, model.in_dim - 2)
    before = split(xu, xc)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(split(xu, xc), before)


def test_columns_must_split_the_input():
    model = _random("deepfm")
    with pytest.raises(InputError, match=r"missing \[13\], repeated \[0\], out of range \[\]"):
        model.serving_split([0], list(range(13)))
    with pytest.raises(InputError, match=r"out of range \[99\]"):
        model.serving_split([99], list(range(model.in_dim)))
    assert serving_order(3, [2], [0, 1]) == [2, 0, 1]


def test_mlp_tail_skips_identities_and_keeps_other_layers():
    tail = MlpTail.from_layers([torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Identity(),
                                torch.nn.Linear(3, 2), torch.nn.Tanh()])
    assert [type(s).__name__ for s in tail.steps] == ["NoneType", "tuple", "Tanh"]
