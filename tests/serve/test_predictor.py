"""Predictor: equal to the training code path, correction, bad input, feature index."""

from __future__ import annotations

import math

import numpy as np
import pytest

from freshrec.serve import FeatureIndex, Predictor, RequestError
from freshrec.sync import Registry, Subscriber
from tests.serve._helpers import (
    make_config,
    reference_scores,
    request,
    score_request,
    train_and_publish,
)


@pytest.mark.parametrize("kind", ["wide_deep", "deepfm", "dcn_v2"])
def test_scores_equal_training_code_path(tmp_path, kind):
    cfg = make_config(kind)
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    state = Subscriber(reg).materialize()
    pred = Predictor.build(cfg, tables=state.tables, dense=state.dense, version=state.version)
    rng = np.random.default_rng(1)
    for _ in range(3):
        body = request(rng, n=12)
        got = pred.score(score_request(body))
        want = reference_scores(cfg, reg, body)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert pred.index.hits > 0  # repeated candidates came from the feature index


def test_log_odds_correction(tmp_path):
    reg = Registry(tmp_path / "reg")
    cfg = make_config(rate=0.25)
    train_and_publish(reg, cfg)
    state = Subscriber(reg).materialize()
    corrected = Predictor.build(cfg, tables=state.tables, dense=state.dense)
    raw = Predictor.build(make_config(rate=1.0), tables=state.tables, dense=state.dense)
    req = score_request(request(np.random.default_rng(0)))
    p, q = corrected.score(req), raw.score(req)
    logit = lambda x: np.log(x / (1 - x))  # noqa: E731
    np.testing.assert_allclose(logit(p) - logit(q), math.log(0.25), atol=1e-4)


def test_missing_features_and_unknown_ids_use_defaults():
    cfg = make_config()
    pred = Predictor.build(cfg)
    bare = score_request({"candidates": [{"item_id": "never-seen"}, {"item_id": 10 ** 15}]})
    s = pred.score(bare)
    assert s.shape == (2,) and np.isfinite(s).all()


@pytest.mark.parametrize("body, field", [
    ({"user": {"gender": {"x": 1}}, "candidates": [{"item_id": 1}]}, "user.gender"),
    ({"user": {"recent": 5}, "candidates": [{"item_id": 1}]}, "user.recent"),
    ({"user": {"age": "old"}, "candidates": [{"item_id": 1}]}, "user.age"),
    ({"candidates": [{"item_id": 1}, {"item_id": 2, "cat": [1]}]}, "candidates[1].cat"),
    ({"candidates": [{"item_id": 1, "price": "cheap"}]}, "candidates[0].price"),
    ({"candidates": [{"item_id": 1, "tags": [1, None]}]}, "candidates[0].tags"),
])
def test_wrong_types_name_the_field(body, field):
    pred = Predictor.build(make_config())
    with pytest.raises(RequestError) as e:
        pred.score(score_request(body))
    assert e.value.field.startswith(field), str(e.value)
    assert pred.score(score_request({"candidates": [{"item_id": 1}]})).shape == (1,)


def test_feature_index_never_serves_stale_features(tmp_path):
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    state = Subscriber(reg).materialize()
    pred = Predictor.build(cfg, tables=state.tables, dense=state.dense)
    index: FeatureIndex = pred.index
    a = pred.score(score_request({"candidates": [{"item_id": 1, "cat": "0"}]}))
    b = pred.score(score_request({"candidates": [{"item_id": 1, "cat": "3"}]}))
    c = pred.score(score_request({"candidates": [{"item_id": 1, "cat": "0"}]}))
    assert a[0] != b[0] and a[0] == c[0]
    assert index.misses == 3 and index.hits == 0
    pred.score(score_request({"candidates": [{"item_id": 1, "cat": "0"}]}))
    assert index.hits == 1
