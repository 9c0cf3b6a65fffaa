from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from freshrec.errors import InputError
from freshrec.features import JaggedBatch
from freshrec.models import (
    CTRModel,
    DCNv2,
    DeepFM,
    ModelConfig,
    WideDeep,
    build_model,
)
from freshrec.nn import PooledEmbedding, SlotSpec
from freshrec.table import EmbeddingTable, InitializerConfig, OptimizerConfig, TableConfig

KINDS = ["deepfm", "wide_deep", "dcn_v2"]
SLOTS = ["user", "item", "tags"]


def _embedding(dim: int = 4, lr: float = 0.1) -> tuple[PooledEmbedding, EmbeddingTable]:
    table = EmbeddingTable(TableConfig(
        name="ids", dim=dim, initializer=InitializerConfig(kind="normal", std=0.1, seed=1),
        optimizer=OptimizerConfig(kind="adagrad", lr=lr)))
    slots = {"user": SlotSpec(table="ids"), "item": SlotSpec(table="ids"),
             "tags": SlotSpec(table="ids", pooling="mean")}
    return PooledEmbedding({"ids": table}, slots), table


def _batch(rng: np.random.Generator, b: int, vocab: int = 20) -> tuple[JaggedBatch, np.ndarray]:
    user = rng.integers(0, vocab, size=b)
    item = rng.integers(vocab, 2 * vocab, size=b)
    tag_lens = rng.integers(0, 3, size=b)
    tags = rng.integers(2 * vocab, 3 * vocab, size=int(tag_lens.sum()))
    batch = JaggedBatch.from_dict({
        "user": (user.astype(np.uint64), np.ones(b, np.int32)),
        "item": (item.astype(np.uint64), np.ones(b, np.int32)),
        "tags": (tags.astype(np.uint64), tag_lens),
    })
    return batch, user


def _model(kind: str, dim: int = 4, n_dense: int = 3, lr: float = 0.1):
    emb, table = _embedding(dim, lr)
    cfg = ModelConfig(kind=kind, mlp=[16, 16], cross_layers=2)
    return build_model(cfg, emb, n_dense), table


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_types(kind):
    torch.manual_seed(0)
    model, _ = _model(kind)
    assert isinstance(model, CTRModel)
    assert (model.n_slots, model.dim, model.n_dense, model.in_dim) == (3, 4, 3, 15)
    batch, _ = _batch(np.random.default_rng(0), 7)
    out = model(batch, torch.randn(7, 3), now=1)
    assert out.shape == (7,) and out.dtype == torch.float32
    emb = torch.randn(7, 3, 4)
    assert model.interact(emb, torch.randn(7, 3)).shape == (7,)


def test_factory_builds_each_kind():
    emb, _ = _embedding()
    assert type(build_model(ModelConfig(kind="deepfm"), emb, 1)) is DeepFM
    assert type(build_model(ModelConfig(kind="wide_deep"), emb, 1)) is WideDeep
    dcn = build_model(ModelConfig(kind="dcn_v2", cross_layers=4), emb, 1)
    assert type(dcn) is DCNv2 and len(dcn.cross) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_dense_params_and_table_rows(kind):
    torch.manual_seed(0)
    model, table = _model(kind)
    batch, user = _batch(np.random.default_rng(1), 32)
    dense = torch.randn(32, 3)
    model.train()
    logits = model(batch, dense, now=5)
    before = table.lookup(np.unique(user).astype(np.uint64)).copy()
    loss = F.binary_cross_entropy_with_logits(logits, torch.ones(32))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert grads and all(g is not None for g in grads)
    # the last layer always gets a nonzero gradient
    assert any(float(g.abs().sum()) > 0 for g in grads)
    after = table.lookup(np.unique(user).astype(np.uint64))
    assert not np.allclose(before, after), "table rows did not move in backward"


def test_deepfm_fm_term_matches_pairwise_sum():
    torch.manual_seed(0)
    emb_mod, _ = _embedding()
    model = DeepFM(emb_mod, 0, mlp=[4])
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    e = torch.randn(5, 3, 4)
    pairwise = sum((e[:, i] * e[:, j]).sum(1) for i in range(3) for j in range(i + 1, 3))
    torch.testing.assert_close(model.interact(e, torch.zeros(5, 0)), pairwise)


def test_dense_input_is_checked():
    model, _ = _model("deepfm")
    batch, _ = _batch(np.random.default_rng(0), 4)
    with pytest.raises(InputError, match=r"dense must have shape \(4, 3\)"):
        model(batch, torch.zeros(4, 2), now=0)
    with pytest.raises(InputError, match="float32"):
        model(batch, torch.zeros(4, 3, dtype=torch.float64), now=0)
    with pytest.raises(InputError, match="n_dense"):
        DeepFM(_embedding()[0], -1)


def test_eval_mode_needs_no_now_and_adds_no_rows():
    model, table = _model("wide_deep")
    model.eval()
    batch, _ = _batch(np.random.default_rng(0), 4)
    with torch.no_grad():
        out = model(batch, torch.zeros(4, 3))
    assert out.shape == (4,) and len(table) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_learns_a_synthetic_rule(kind):
    """label = 1 iff (user id is even) xor (dense[0] > 0): needs the embeddings and dense."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    model, _ = _model(kind, dim=8, lr=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        batch, user = _batch(rng, 128)
        dense = torch.randn(128, 3)
        y = torch.tensor(((user % 2 == 0) ^ (dense[:, 0] > 0).numpy()).astype(np.float32))
        loss = F.binary_cross_entropy_with_logits(model(batch, dense, now=step), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert first > 0.6 and last < 0.5 * first, (first, last)


def _mlp_reference(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """A plain MLP in float64: ReLU after every layer but the last."""
    for k, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if k < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def _linears(module: torch.nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
            for m in module.modules() if isinstance(m, torch.nn.Linear)]


def _random_dense_part(model: CTRModel) -> None:
    """Every dense parameter drawn at random (DCN's cross layers start at zero)."""
    torch.manual_seed(3)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.4)


def test_wide_deep_forward_matches_a_plain_reference():
    """``logit = w . x + b + MLP(x)`` with ``x = [e_1 .. e_F, dense]``, in float64 numpy."""
    model, _ = _model("wide_deep")
    _random_dense_part(model)
    model.eval()
    e, dense = torch.randn(6, 3, 4), torch.randn(6, 3)
    x = np.concatenate([e.reshape(6, -1).double().numpy(), dense.double().numpy()], axis=1)
    (ww, bw), = _linears(model.wide)
    want = (x @ ww.T + bw)[:, 0] + _mlp_reference(_linears(model.deep), x)[:, 0]
    with torch.no_grad():
        np.testing.assert_allclose(model.interact(e, dense).numpy(), want, rtol=1e-5, atol=1e-5)


def test_dcn_v2_forward_matches_a_plain_reference():
    """``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` for each cross layer, then the MLP."""
    torch.manual_seed(0)
    emb, _ = _embedding()
    model = DCNv2(emb, 3, mlp=[16, 8], cross_layers=3)
    _random_dense_part(model)
    model.eval()
    e, dense = torch.randn(6, 3, 4), torch.randn(6, 3)
    x0 = np.concatenate([e.reshape(6, -1).double().numpy(), dense.double().numpy()], axis=1)
    x = x0
    for w, b in _linears(model.cross):
        x = x0 * (x @ w.T + b) + x
    want = _mlp_reference(_linears(model.mlp), x)[:, 0]
    with torch.no_grad():
        np.testing.assert_allclose(model.interact(e, dense).numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_concat_axes_name_every_parameter_that_reads_the_concat(kind):
    """Reordering the slots and dense features in the input and along the named axes of the
    named parameters leaves every logit unchanged: nothing else depends on the order."""
    torch.manual_seed(0)
    model, _ = _model(kind)
    with torch.no_grad():
        for p in model.parameters():   # cross layers start at zero; make them matter
            p.normal_(0, 0.3)
    f, d = model.n_slots, model.dim
    emb, dense = torch.randn(5, f, d), torch.randn(5, model.n_dense)
    before = model.interact(emb, dense)
    slots = list(range(f))[::-1]
    order = torch.tensor([s * d + j for s in slots for j in range(d)]
                         + [f * d + k for k in range(model.n_dense)][::-1])
    state = model.state_dict()
    for name, axes in model.concat_axes().items():
        assert all(state[name].shape[a] == model.in_dim for a in axes), name
        for a in axes:
            state[name] = state[name].index_select(a, order)
    model.load_state_dict(state)
    after = model.interact(emb[:, slots], dense.flip(1))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
