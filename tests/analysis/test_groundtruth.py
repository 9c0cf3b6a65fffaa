from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from freshrec.analysis import trainer_importance
from freshrec.analysis.groundtruth import context_document, joined_examples, true_effects
from freshrec.analysis.permutation import rank_correlation
from freshrec.config import config_from_dict
from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
from freshrec.errors import ConfigError
from freshrec.stream.events import decode
from freshrec.train.trainer import Trainer

EFFECTS = (0.0, 0.0, 0.6, 1.5)
SIM = SimulatorConfig(seed=3, n_users=2000, n_items=800, candidates=20, bias=-2.5,
                      context_effects=EFFECTS)


def sim_document() -> dict:
    """DeepFM on the simulator's joined examples (ids, position, category)."""
    opt = {"kind": "adagrad", "lr": 0.05}
    return {
        "features": {
            "tables": {t: {"dim": 8, "optimizer": opt} for t in ("user", "item", "attr")},
            "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"},
                      "position": {"table": "attr"}, "i_category": {"table": "attr"}},
            "labels": ["click"]},
        "model": {"kind": "deepfm", "mlp": [32]},
        "train": {"batch_size": 256, "dense_lr": 0.003, "importance_window_s": 60},
    }


@pytest.fixture(scope="module")
def examples() -> pa.Table:
    return joined_examples(SIM, n_requests=1500)


def _actions(config: SimulatorConfig) -> list[bytes]:
    return [r for _, r in ClickStreamSimulator(config).records(n_requests=300)
            if b'"action"' in r]


def test_irrelevant_context_features_leave_the_stream_unchanged():
    base = SimulatorConfig(seed=5, n_users=100, n_items=80, candidates=10)
    same = SimulatorConfig(seed=5, n_users=100, n_items=80, candidates=10,
                           context_effects=(0.0, 0.0))
    assert _actions(base) == _actions(same)           # the same clicks, at the same times
    strong = SimulatorConfig(seed=5, n_users=100, n_items=80, candidates=10,
                             context_effects=(3.0,))
    assert _actions(base) != _actions(strong)
    imp = next(decode(r) for _, r in ClickStreamSimulator(same).records(n_requests=1))
    assert set(imp["user"]) >= {"ctx0", "ctx1"} and 0 <= imp["user"]["ctx1"] < 10


def test_context_effects_are_validated():
    with pytest.raises(ConfigError, match="context_values"):
        SimulatorConfig(context_effects=(1.0,), context_values=1)
    with pytest.raises(ConfigError, match="context_effects"):
        SimulatorConfig(context_effects=("big",))


def test_the_joined_examples_carry_the_effects(examples):
    """The click rate varies with the strong feature's value and not with an irrelevant
    one's (the true probabilities, per value)."""
    p = examples.column("true_p").to_numpy()
    spread = {}
    for name in true_effects(SIM):
        v = examples.column(name).to_numpy()
        logit = np.log(p / (1 - p))
        spread[name] = np.std([logit[v == k].mean() for k in range(10)])
    # the std of the per-value mean logit: the effect, plus sampling noise (~0.1 here)
    assert spread["u_ctx3"] == pytest.approx(1.5, abs=0.3), spread
    assert spread["u_ctx2"] == pytest.approx(0.6, abs=0.2), spread
    assert spread["u_ctx0"] < 0.25 and spread["u_ctx1"] < 0.25, spread


def test_importance_ranks_features_by_their_true_effect(examples):
    cfg = config_from_dict(context_document(sim_document(), SIM), where="test")
    trainer = Trainer(cfg)
    n = examples.num_rows
    trainer.fit(examples.slice(0, n * 3 // 4).to_batches())
    scores = trainer_importance(trainer, examples.slice(n * 3 // 4).to_batches()).get()
    truth = true_effects(SIM)
    ctx = {k: scores[k] for k in truth}
    assert ctx["u_ctx3"] > ctx["u_ctx2"] > max(ctx["u_ctx0"], ctx["u_ctx1"]), ctx
    assert rank_correlation(ctx, truth) > 0.9
