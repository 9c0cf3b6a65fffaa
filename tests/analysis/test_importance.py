from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from freshrec.analysis import (
    FeatureBlock,
    FeatureImportance,
    concat_blocks,
    concat_gradient,
    trainer_importance,
)
from freshrec.config import config_from_dict
from freshrec.errors import InputError
from freshrec.features import JaggedBatch
from freshrec.models import DCNv2, DeepFM, WideDeep
from freshrec.nn import PooledEmbedding, SlotSpec
from freshrec.table import EmbeddingTable, TableConfig
from freshrec.train.trainer import Trainer

MODELS = ["deepfm", "wide_deep", "dcn_v2"]


def _reference(blocks: list[FeatureBlock], x: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """The formula of the module docstring, directly over all examples in float64."""
    per_col = (g ** 2).mean(axis=0) * x.var(axis=0)
    return {b.name: float(per_col[b.start:b.stop].sum() / b.width) for b in blocks}


def test_batches_merge_to_the_whole_data_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (301, 7))
    g = rng.normal(0.0, 1.5, (301, 7))
    blocks = concat_blocks(["a", "b"], dim=3, dense_names=["d"])
    imp = FeatureImportance(blocks)
    for lo, hi in [(0, 1), (1, 1), (1, 120), (120, 301)]:
        imp.add(torch.from_numpy(x[lo:hi]), torch.from_numpy(g[lo:hi]))
    assert imp.examples == 301
    assert imp.get() == pytest.approx(_reference(blocks, x, g), rel=1e-10)


def test_gradient_and_variance_are_both_needed():
    """Logit = x . w over three features: "signal" (w 1, var 1), "constant" (w 10, never
    varies) and "ignored" (w 0, var 100). Only the product ranks signal first: the gradient
    alone ranks the constant first, the variance alone the ignored one."""
    rng = np.random.default_rng(1)
    n = 2000
    x = np.stack([rng.normal(0, 1, n), np.full(n, 4.0), rng.normal(0, 10, n)], axis=1)
    g = np.tile([1.0, 10.0, 0.0], (n, 1))
    blocks = concat_blocks([], dim=1, dense_names=["signal", "constant", "ignored"])
    imp = FeatureImportance(blocks)
    imp.add(torch.from_numpy(x), torch.from_numpy(g))
    scores = imp.get()
    assert scores["signal"] == pytest.approx(1.0, rel=0.1)
    assert scores["constant"] == 0.0 and scores["ignored"] == 0.0
    grad_only = (g ** 2).mean(axis=0)
    variance_only = x.var(axis=0)
    assert np.argmax(grad_only) == 1 and np.argmax(variance_only) == 2


def test_blocks_are_normalised_by_their_width():
    """A slot of 4 identical columns scores as one such column, not four times it."""
    x = torch.tensor([[1.0] * 4 + [1.0], [-1.0] * 4 + [-1.0]])
    imp = FeatureImportance(concat_blocks(["wide"], dim=4, dense_names=["narrow"]))
    imp.add(x, torch.ones_like(x))
    assert imp.get() == {"wide": 1.0, "narrow": 1.0}


def test_before_any_example_every_score_is_nan():
    imp = FeatureImportance(concat_blocks(["a"], dim=2, dense_names=[]))
    assert math.isnan(imp.get()["a"]) and imp.examples == 0


@pytest.mark.parametrize(("blocks", "match"), [
    ([FeatureBlock(name="a", kind="dense", start=0, stop=1)] * 2, "unique"),
    ([FeatureBlock(name="a", kind="slot", start=0, stop=2),
      FeatureBlock(name="b", kind="dense", start=1, stop=2)], "column 1"),
])
def test_bad_blocks_are_refused(blocks, match):
    with pytest.raises(InputError, match=match):
        FeatureImportance(blocks)


def test_an_empty_block_is_refused():
    with pytest.raises(InputError, match=r"0 <= start < stop, got \[2, 2\)"):
        FeatureBlock(name="a", kind="dense", start=2, stop=2)


def test_shapes_must_match():
    imp = FeatureImportance(concat_blocks(["a"], dim=2, dense_names=["d"]))
    with pytest.raises(InputError, match=r"\(B, >= 3\), got \(2, 3\) and \(2, 2\)"):
        imp.add(torch.zeros(2, 3), torch.zeros(2, 2))


@pytest.mark.parametrize("cls", [DeepFM, WideDeep, DCNv2])
def test_concat_gradient_is_each_examples_own_gradient(cls):
    """Against finite differences of the model's forward, example by example."""
    torch.manual_seed(0)
    table = EmbeddingTable(TableConfig(name="ids", dim=3))
    emb = PooledEmbedding({"ids": table}, {"u": SlotSpec(table="ids"),
                                           "i": SlotSpec(table="ids")})
    model = cls(emb, n_dense=2, mlp=[8])
    if cls is DCNv2:   # cross weights start at zero: make the cross layers do something
        for layer in model.cross:
            torch.nn.init.normal_(layer.linear.weight, std=0.3)
    batch = JaggedBatch.from_dict({"u": [[1], [2], [3]], "i": [[4], [], [5, 6]]})
    model(batch, torch.zeros(3, 2), now=0)  # admit the ids
    x, g = concat_gradient(model, batch, torch.randn(3, 2))
    ref = model.double()   # the same weights, for float64 finite differences
    x64, eps = x.double(), 1e-6
    f, d = model.n_slots, model.dim
    for j in range(model.in_dim):
        hi, lo = x64.clone(), x64.clone()
        hi[:, j] += eps
        lo[:, j] -= eps
        with torch.no_grad():
            zh = ref.interact(hi[:, :f * d].reshape(3, f, d), hi[:, f * d:])
            zl = ref.interact(lo[:, :f * d].reshape(3, f, d), lo[:, f * d:])
        torch.testing.assert_close(g[:, j].double(), (zh - zl) / (2 * eps), rtol=1e-4, atol=1e-6)


def document(kind: str) -> dict:
    """A config document: two slots and two dense features, one of each informative."""
    return {
        "features": {
            "tables": {"ids": {"dim": 4, "optimizer": {"kind": "adagrad", "lr": 0.1}}},
            "slots": {"signal": {"table": "ids"}, "noise": {"table": "ids"}},
            "dense": {"x_signal": {"norm": "none"}, "x_noise": {"norm": "none"}},
            "labels": ["click"]},
        "model": {"kind": kind, "mlp": [16], "cross_layers": 1},
        "train": {"batch_size": 128, "dense_lr": 0.01, "epochs": 3},
    }


def data(seed: int, n: int = 6000) -> list[pa.RecordBatch]:
    """The label is set by the signal slot (even ids click) and x_signal; the noise slot
    and x_noise are independent of it, x_noise with 25 times x_signal's variance."""
    rng = np.random.default_rng(seed)
    signal = rng.integers(0, 20, n)
    x_signal = rng.normal(0, 1, n).astype(np.float32)
    click = ((signal % 2 == 0) * 2.0 - 1.0 + x_signal > 0).astype(np.float32)
    return [pa.RecordBatch.from_pydict({
        "signal": signal + 1000, "noise": rng.integers(0, 20, n) + 2000,
        "x_signal": x_signal, "x_noise": rng.normal(0, 5, n).astype(np.float32),
        "click": click, "event_time": np.arange(n) // 10})]


@pytest.mark.parametrize("kind", MODELS)
def test_a_trained_model_ranks_informative_features_above_noise(kind):
    trainer = Trainer(config_from_dict(document(kind), where="test"))
    summary = trainer.fit(data(0))
    assert summary["auc_window"] > 0.9
    scores = trainer_importance(trainer, data(1)).get()
    assert scores["signal"] > 5 * scores["noise"], scores
    assert scores["x_signal"] > 5 * scores["x_noise"], scores
    # without the gradient the high-variance noise would win
    assert np.var(data(1)[0].column("x_noise")) > 10 * np.var(data(1)[0].column("x_signal"))
