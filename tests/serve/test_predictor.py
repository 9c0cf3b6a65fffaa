"""Predictor: equal to the training code path (any model, any JSON type of an id, a registry
read by a new process), correction, bad input, feature index."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import numpy as np
import orjson
import pytest
import torch

from freshrec.config import config_from_dict
from freshrec.models import CTRModel, flat_input
from freshrec.nn import PooledEmbedding, SlotSpec
from freshrec.serve import FeatureIndex, Predictor, RequestError, parse_v2_request
from freshrec.serve.impressions import impression_event, impression_record
from freshrec.stream.events import decode
from freshrec.sync import Registry, Subscriber
from tests.serve._helpers import (
    make_config,
    model_scores,
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
        user = [req.user_id if k == "user_id" else req.user.get(k) for k in pred._ukeys]
        assert pred._user._ids_fast(user) is not None
        np.testing.assert_allclose(pred.score(req), reference_scores(cfg, reg, body),
                                   rtol=1e-5, atol=1e-6)


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


def _v2(body, ident):
    """``body`` as a KServe v2 request whose ids (user, item, categorical and list features)
    are ``ident(id)``: ``str`` for BYTES tensors, ``int`` for INT64 ones."""
    cands, user = body["candidates"], body["user"]
    dtype = "BYTES" if ident is str else "INT64"

    def t(name, data, shape, datatype=dtype):
        return {"name": name, "shape": shape, "datatype": datatype, "data": data}

    return orjson.dumps({"inputs": [
        t("user_id", [ident(body["user_id"])], [1]),
        t("u_gender", [ident(user["gender"])], [1]),
        t("u_recent", [ident(x) for x in user["recent"]], [1, len(user["recent"])]),
        t("u_age", [user["age"]], [1], "FP32"),
        t("item_id", [ident(c["item_id"]) for c in cands], [len(cands)]),
        t("i_cat", [ident(int(c["cat"])) for c in cands], [len(cands)]),
        t("i_tags", [[ident(x) for x in c.get("tags", [])] for c in cands], [len(cands)]),
        t("i_price", [c.get("price") for c in cands], [len(cands)], "FP32"),
    ]})


def test_an_id_scores_alike_whatever_its_json_type(tmp_path):
    """KServe BYTES ids ("7") and INT64 ids (7) score alike, and as training scored the ids
    it read (category ids were strings in its data, here sent as ints too)."""
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    state = Subscriber(reg).materialize()
    pred = Predictor.build(cfg, tables=state.tables, dense=state.dense)
    body = request(np.random.default_rng(6), n=9)
    as_bytes = pred.score(parse_v2_request(_v2(body, str)))
    as_ints = pred.score(parse_v2_request(_v2(body, int)))
    np.testing.assert_array_equal(as_bytes, as_ints)
    np.testing.assert_allclose(as_ints, reference_scores(cfg, reg, body), rtol=1e-5, atol=1e-6)


_SCORE_IN_A_NEW_PROCESS = """
import json, sys
from freshrec.serve import Predictor, config_from_registry
from freshrec.serve.request import build_request
from freshrec.sync import Registry, Subscriber
reg = Registry(sys.argv[1])
cfg = config_from_registry(reg)
state = Subscriber(reg).materialize()
pred = Predictor.build(cfg, tables=state.tables, dense=state.dense)
bodies = json.loads(open(sys.argv[2]).read())
print(json.dumps({"slots": [s.name for s in cfg.features.slots],
                  "dense": [d.name for d in cfg.features.dense],
                  "scores": [pred.score(build_request(b, 1000)).tolist() for b in bodies]}))
"""


def test_a_registry_read_by_a_new_process_scores_like_the_trainer(tmp_path):
    """The config fingerprint ignores key order, the model's input order does not: slots and
    dense fields listed out of sorted order keep the trainer's order in a new process."""
    raw = copy.deepcopy(dict(make_config("deepfm").raw))
    feats = raw["features"]
    feats["slots"] = dict(sorted(feats["slots"].items(), reverse=True))
    feats["dense"] = dict(sorted(feats["dense"].items(), reverse=True))
    cfg = config_from_dict(raw, where="tests/serve")
    slots, dense = [s.name for s in cfg.features.slots], [d.name for d in cfg.features.dense]
    assert slots != sorted(slots) and dense != sorted(dense)
    reg = Registry(tmp_path / "reg")
    trainer, _ = train_and_publish(reg, cfg)
    rng = np.random.default_rng(11)
    bodies = [request(rng, n=12) for _ in range(3)]
    (tmp_path / "bodies.json").write_text(json.dumps(bodies))
    out = subprocess.run([sys.executable, "-c", _SCORE_IN_A_NEW_PROCESS, str(reg.root),
                          str(tmp_path / "bodies.json")], capture_output=True, text=True,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["slots"], got["dense"]) == (slots, dense)
    for body, scores in zip(bodies, got["scores"], strict=True):
        np.testing.assert_allclose(scores, model_scores(cfg, trainer.model, body), rtol=1e-5,
                                   atol=1e-6)


class _Bilinear(CTRModel):
    """A model serving has never heard of, without a serving split of its own."""

    def __init__(self, embedding, n_dense: int) -> None:
        super().__init__(embedding, n_dense)
        self.w = torch.nn.Bilinear(self.in_dim, self.in_dim, 1)

    def interact(self, emb, dense):
        x = flat_input(emb, dense)
        return self.w(x, x).squeeze(1)


def test_any_model_is_served_like_the_training_code_path(tmp_path):
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    state = Subscriber(reg).materialize()
    emb = PooledEmbedding(state.tables, {s.name: SlotSpec(table=s.table, pooling=s.pooling)
                                         for s in cfg.features.slots})
    torch.manual_seed(0)
    model = _Bilinear(emb, len(cfg.features.dense))
    pred = Predictor.from_model(cfg, model)
    assert pred.engine.name == "torch"  # the default split runs the model itself
    body = request(np.random.default_rng(7), n=10)
    np.testing.assert_allclose(pred.score(score_request(body)), model_scores(cfg, model, body),
                               rtol=1e-5, atol=1e-6)
