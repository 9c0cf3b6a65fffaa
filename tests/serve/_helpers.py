"""A small trained model published to a real registry, and requests for it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from freshrec.config import FreshrecConfig, config_from_dict
from freshrec.features import FeatureSchema
from freshrec.models import CTRModel, build_model
from freshrec.nn import PooledEmbedding, SlotSpec
from freshrec.serve import Predictor, ScoreRequest
from freshrec.stream.events import examples_to_record_batch, flatten_example
from freshrec.sync import Publisher, Registry, Subscriber
from freshrec.train.trainer import Trainer

_TABLE = {"dim": 8, "optimizer": {"kind": "adagrad", "lr": 0.2},
          "initializer": {"kind": "normal", "std": 0.1}}


def make_config(kind: str = "wide_deep", rate: float = 0.25) -> FreshrecConfig:
    """User slots, candidate slots (single, multi, position), dense on both sides."""
    return config_from_dict({
        "features": {
            "tables": {"user": _TABLE, "item": _TABLE},
            "slots": {
                "user_id": {"table": "user"},
                "u_gender": {"table": "user"},
                "u_recent": {"table": "item", "kind": "multi", "max_len": 3, "pooling": "mean",
                             "id_space": "item_id"},
                "item_id": {"table": "item"},
                "position": {"table": "user"},
                "i_cat": {"table": "item"},
                "i_tags": {"table": "item", "kind": "multi"},
            },
            "dense": {"u_age": {"norm": "standard", "mean": 30, "std": 10},
                      "i_price": {"norm": "log", "fill": 2.0}},
            "labels": ["click"],
        },
        "model": {"kind": kind, "mlp": [16, 8]},
        "train": {"negative_sample_rate": rate, "batch_size": 64, "seed": 0},
    }, where="tests/serve")


def examples(rng: np.random.Generator, n: int, t0: int = 0) -> pa.RecordBatch:
    """Joined examples whose click depends on item parity (so the model learns something)."""
    rows = []
    for i in range(n):
        item = int(rng.integers(0, 60))
        rows.append({
            "user_id": int(rng.integers(0, 30)), "u_gender": int(rng.integers(0, 2)),
            "u_recent": [int(x) for x in rng.integers(0, 60, rng.integers(0, 5))],
            "item_id": item, "position": int(rng.integers(0, 10)),
            "i_cat": str(item % 5), "i_tags": [item % 3, 7], "u_age": float(rng.integers(18, 60)),
            "i_price": float(rng.random() * 10),
            "click": float(item % 2 == 0 and rng.random() < 0.8),
            "event_time": t0 + i,
        })
    return examples_to_record_batch(rows)


def train_and_publish(reg: Registry, cfg: FreshrecConfig, seed: int = 0,
                      n: int = 1024) -> tuple[Trainer, Publisher]:
    """A trainer trained on ``n`` examples, published as a full snapshot with its config."""
    trainer = Trainer(cfg)
    trainer.fit([examples(np.random.default_rng(seed), n)])
    pub = Publisher(reg, trainer.tables, trainer.model.state_dict)
    pub.publish_full(event_time=n, meta={"config": dict(cfg.raw)})
    return trainer, pub


def train_more(trainer: Trainer, seed: int, n: int = 512, t0: int = 5000) -> None:
    """More training steps on new examples (``fit`` stops after its epochs)."""
    rb = examples(np.random.default_rng(seed), n, t0=t0)
    for start in range(0, n, 128):
        trainer.learn_batch(trainer.schema.encode(rb.slice(start, 128)))


def request(rng: np.random.Generator, n: int = 10, rid: str | None = None) -> dict[str, Any]:
    """A JSON request body (as a dict) with some features missing and unknown ids."""
    cands = []
    for j in range(n):
        item = int(rng.integers(0, 80))  # ids >= 60 were never trained: default rows
        c: dict[str, Any] = {"item_id": item, "cat": str(item % 5)}
        if j % 3:
            c["tags"] = [item % 3]
        if j % 4:
            c["price"] = float(j)
        cands.append(c)
    body: dict[str, Any] = {"user_id": int(rng.integers(0, 40)),
                            "user": {"gender": int(rng.integers(0, 2)),
                                     "recent": [int(x) for x in rng.integers(0, 60, 4)],
                                     "age": 35},
                            "candidates": cands}
    if rid is not None:
        body["request_id"] = rid
    return body


def reference_scores(cfg: FreshrecConfig, reg: Registry, body: dict[str, Any],
                     version: int | None = None) -> np.ndarray:
    """Scores of ``body`` by the training code path (FeatureSchema + model.forward) on the
    registry state at ``version``, with the log-odds correction."""
    state = Subscriber(reg).materialize(version)
    fc = cfg.features
    emb = PooledEmbedding(state.tables, {s.name: SlotSpec(table=s.table, pooling=s.pooling)
                                         for s in fc.slots})
    model = build_model(cfg.model, emb, len(fc.dense))
    model.load_state_dict(state.dense)
    return model_scores(cfg, model, body)


def model_scores(cfg: FreshrecConfig, model: CTRModel, body: dict[str, Any]) -> np.ndarray:
    """Scores of ``body`` by ``model`` on the training code path: the request as the joiner
    writes its examples, encoded by FeatureSchema, ``model.forward``, the log-odds correction."""
    model.eval()
    imp = {"request_id": "x", "user_id": body["user_id"], "timestamp": 0, "user": body["user"]}
    exs = [flatten_example(imp, {"item_id": c["item_id"], "position": j,
                                 "features": {k: v for k, v in c.items() if k != "item_id"}},
                           {}, 1.0) for j, c in enumerate(body["candidates"])]
    keys = list(dict.fromkeys(k for ex in exs for k in ex))  # from_pylist reads row 0's keys
    exs = [{k: ex.get(k) for k in keys} for ex in exs]
    enc = FeatureSchema(cfg.features).encode(examples_to_record_batch(exs), with_labels=False)
    with torch.no_grad():
        logits = model(enc.sparse, torch.from_numpy(enc.dense))
    rate = cfg.train.negative_sample_rate
    return torch.sigmoid(logits + math.log(rate)).numpy()


def score_request(body: dict[str, Any]) -> ScoreRequest:
    from freshrec.serve.request import build_request

    return build_request(body, 1000)


__all__ = ["Predictor", "examples", "make_config", "model_scores", "reference_scores",
           "request", "score_request", "train_and_publish"]
