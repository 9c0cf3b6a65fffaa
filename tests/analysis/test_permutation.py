from __future__ import annotations

import math

import pyarrow as pa
import pytest

from freshrec.analysis import trainer_importance
from freshrec.analysis.permutation import permutation_importance, rank_correlation, score_auc
from freshrec.config import config_from_dict
from freshrec.errors import InputError
from freshrec.train.trainer import Trainer
from tests.analysis.test_importance import data, document


@pytest.fixture(scope="module")
def trained() -> Trainer:
    doc = document("wide_deep")
    doc["train"]["epochs"] = 2
    trainer = Trainer(config_from_dict(doc, where="test"))
    trainer.fit(data(0))
    return trainer


def test_shuffling_an_informative_feature_costs_auc_and_noise_costs_none(trained):
    table = pa.Table.from_batches(data(1))
    res = permutation_importance(trained, table, repeats=2, seed=3)
    assert res.base_auc == pytest.approx(score_auc(trained, table)) and res.base_auc > 0.9
    assert res.drops["signal"] > 0.1 and res.drops["x_signal"] > 0.05, res.drops
    assert abs(res.drops["noise"]) < 0.01 and abs(res.drops["x_noise"]) < 0.01, res.drops
    assert res.seconds > 0
    # the gradient method ranks the four features the same way
    grad = trainer_importance(trained, data(1)).get()
    assert grad["signal"] > grad["noise"] and grad["x_signal"] > grad["x_noise"]
    assert rank_correlation(grad, res.drops) >= 0.8


def test_the_data_must_hold_every_features_column(trained):
    table = pa.Table.from_batches(data(1)).drop_columns(["x_noise"])
    with pytest.raises(InputError, match=r"no column \['x_noise'\]"):
        permutation_importance(trained, table)
    with pytest.raises(InputError, match="repeats"):
        permutation_importance(trained, table, repeats=0)


def test_rank_correlation_averages_ties_and_checks_its_inputs():
    # ranks (0.5, 0.5, 2) against (0, 1, 2): rho = 0.866...
    assert rank_correlation([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(rank_correlation([1, 1], [1, 2]))
    with pytest.raises(InputError, match="same features"):
        rank_correlation({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0})
    with pytest.raises(InputError, match="same length"):
        rank_correlation([1.0, 2.0], [1.0, 2.0, 3.0])
