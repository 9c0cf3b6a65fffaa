"""Predictor: equal to the training code path, correction, bad input, feature index."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from freshrec.config import config_from_dict
from freshrec.serve import FeatureIndex, Predictor, RequestError
from freshrec.serve.impressions import impression_event, impression_record
from freshrec.stream.events import decode
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


def _single_item_config():
    """The helpers' config without the candidate-side list slot and with the position on the
    item table: every candidate table group takes the gathered (item-major) path."""
    raw = copy.deepcopy(dict(make_config().raw))
    del raw["features"]["slots"]["i_tags"]
    raw["features"]["slots"]["position"]["table"] = "item"
    return config_from_dict(raw, where="tests/serve")


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_fast_paths_equal_training_code_path(tmp_path, engine):
    cfg = _single_item_config()
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    state = Subscriber(reg).materialize()
    pred = Predictor.build(cfg, tables=state.tables, dense=state.dense, engine=engine)
    assert all(f is not None for f in pred._cfast) and pred.engine.name == engine
    rng = np.random.default_rng(5)
    for _ in range(3):
        body = request(rng, n=15)
        req = score_request(body)
        fast = pred._user_fast(req)
        assert fast is not None
        np.testing.assert_array_equal(fast, pred._user_block_checked(req))
        np.testing.assert_allclose(pred.score(req), reference_scores(cfg, reg, body),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("user, fast", [
    ({"gender": "1", "recent": [1, 2], "age": 3}, False),      # a string id
    ({"gender": 1.0, "recent": [1, 2], "age": 3}, False),      # a float id (rounded)
    ({"gender": 1, "recent": [1, "2"], "age": 3}, False),      # a string in a list
    ({"gender": 2 ** 63, "age": 3}, False),                    # an id past int64 (uint64)
    ({"gender": 1, "age": "30"}, True),                        # numeric string: as before
])
def test_checked_user_path_takes_what_the_fast_path_does_not(user, fast):
    pred = Predictor.build(make_config())
    req = score_request({"user_id": 3, "user": user, "candidates": [{"item_id": 1}]})
    assert (pred._user_fast(req) is not None) is fast
    np.testing.assert_array_equal(pred._user_block(req), pred._user_block_checked(req))


def test_impression_record_equals_the_event(tmp_path):
    pred = Predictor.build(make_config())
    body = request(np.random.default_rng(2), n=8, rid="r9")
    body["candidates"][3]["position"] = 99  # not a feature: the served position wins
    for _ in range(2):  # a miss, then hits from the feature index
        req = score_request(body)
        pred.score(req)
        assert req.fragments is not None and len(req.fragments) == 8
        assert decode(impression_record(req, 4, 12.5)) == impression_event(req, 4, 12.5)
    assert pred.index.hits == 8
    plain = score_request(body)  # no fragments: built from the candidates
    assert decode(impression_record(plain, None, 1.0)) == impression_event(plain, None, 1.0)
