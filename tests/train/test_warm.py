from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from freshrec.cli import main
from freshrec.config import FreshrecConfig, config_from_dict
from freshrec.errors import ConfigError, IncompatibleFormatError
from freshrec.train.trainer import Trainer
from freshrec.train.warm import warm_start

MODELS = ["deepfm", "wide_deep", "dcn_v2"]


def _config(kind: str, slots: list[str], dense: list[str], *, dim: int = 2,
            mlp: tuple[int, ...] = (8,), new_table_init: str = "normal") -> FreshrecConfig:
    """Slots ``a``, ``b``, ``c`` on table ``ids``; any other slot on its own table ``<name>``."""
    tables = {"ids": {"dim": dim, "optimizer": {"kind": "adagrad", "lr": 0.1}}}
    tables |= {s: {"dim": dim, "initializer": {"kind": new_table_init}}
               for s in slots if s not in "abc"}
    return config_from_dict({
        "features": {
            "tables": tables,
            "slots": {s: {"table": "ids" if s in "abc" else s} for s in slots},
            "dense": {d: {"norm": "none"} for d in dense}, "labels": ["click"]},
        "model": {"kind": kind, "mlp": list(mlp), "cross_layers": 2},
        "train": {"batch_size": 64, "dense_lr": 0.01},
    }, where="test")


def _data(seed: int, n: int = 640) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(seed)
    cols = {s: rng.integers(0, 30, n) for s in "abcd"}
    cols |= {d: rng.normal(0, 1, n).astype(np.float32) for d in "xyz"}
    cols["click"] = ((cols["a"] % 2) ^ (cols["x"] > 0)).astype(np.float32)
    cols["event_time"] = np.arange(n) // 10
    return [pa.RecordBatch.from_pydict(cols)]


def _trained(cfg: FreshrecConfig, run_dir) -> Trainer:
    trainer = Trainer(cfg, run_dir=run_dir)
    trainer.fit(_data(0))
    if cfg.model.kind.value == "dcn_v2":   # trained cross layers (they start at zero)
        with torch.no_grad():
            for layer in trainer.model.cross:
                layer.linear.weight.normal_(0, 0.2)
                layer.linear.bias.normal_(0, 0.2)
    trainer.save()
    return trainer


def _predict(trainer: Trainer) -> np.ndarray:
    return trainer.predict_batch(trainer.schema.encode(_data(1)[0]))


@pytest.mark.parametrize("kind", MODELS)
def test_the_same_config_warm_starts_as_it_resumes(kind, tmp_path):
    cfg = _config(kind, ["a", "b"], ["x"])
    _trained(cfg, tmp_path)
    resumed, warm = Trainer(cfg), Trainer(cfg)
    assert resumed.resume(tmp_path / "checkpoints")
    report = warm_start(warm, tmp_path / "checkpoints", previous=cfg)
    np.testing.assert_array_equal(_predict(warm), _predict(resumed))
    assert report.initialised == report.dropped == report.tables_fresh == ()
    assert report.tables_loaded == ("ids",) and report.repositioned


@pytest.mark.parametrize("kind", MODELS)
def test_a_new_slot_and_dense_feature_change_no_output_at_step_0(kind, tmp_path):
    old = _trained(_config(kind, ["a", "b"], ["x"]), tmp_path)
    # DeepFM's FM term reads every slot's embedding: a new table must start at zero there
    new = Trainer(_config(kind, ["a", "d", "b"], ["z", "x"],
                          new_table_init="zeros" if kind == "deepfm" else "normal"))
    report = warm_start(new, tmp_path / "checkpoints", previous=old.config)
    np.testing.assert_allclose(_predict(new), _predict(old), rtol=1e-5, atol=1e-6)
    assert report.initialised == ("d", "z") and report.tables_fresh == ("d",)
    assert report.dropped == report.tables_dropped == ()


def _reference(old: dict[str, torch.Tensor], kind: str, cols: list[int], width: int
               ) -> dict[str, torch.Tensor]:
    """The re-positioned parameters, built by hand: new column j is old column cols[j]."""
    first = {"deepfm": ["linear.weight", "mlp.0.weight"],
             "wide_deep": ["wide.weight", "deep.0.weight"], "dcn_v2": ["mlp.0.weight"]}[kind]
    ref = {n: old[n][:, cols] for n in first}
    for i in range(2 if kind == "dcn_v2" else 0):
        ref[f"cross.{i}.linear.weight"] = old[f"cross.{i}.linear.weight"][cols][:, cols]
        ref[f"cross.{i}.linear.bias"] = old[f"cross.{i}.linear.bias"][cols]
    assert all(v.shape[-1] == width for v in ref.values())
    return ref


@pytest.mark.parametrize("kind", MODELS)
def test_removing_a_slot_repositions_the_kept_columns(kind, tmp_path):
    """Old concat [a a b b c c x y]; new [a a c c y x]: columns 0 1 4 5 7 6."""
    old = _trained(_config(kind, ["a", "b", "c"], ["x", "y"]), tmp_path)
    new = Trainer(_config(kind, ["a", "c"], ["y", "x"]))
    report = warm_start(new, tmp_path / "checkpoints", previous=old.config)
    assert report.dropped == ("b",) and report.initialised == ()
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    ref = _reference(old_state, kind, [0, 1, 4, 5, 7, 6], new.model.in_dim)
    assert sorted(ref) == list(report.repositioned)
    for name, value in new_state.items():
        torch.testing.assert_close(value, ref.get(name, old_state[name]), rtol=0, atol=0)
    # an example without slot b scores the same in both models
    rb = _data(1)[0]
    rb = rb.set_column(rb.schema.get_field_index("b"), "b",
                       pa.array([None] * rb.num_rows, pa.int64()))
    np.testing.assert_allclose(new.predict_batch(new.schema.encode(rb)),
                               old.predict_batch(old.schema.encode(rb)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("change", "match"), [
    ({"kind": "wide_deep"}, "the checkpoint's model is 'deepfm', this config's is 'wide_deep'"),
    ({"dim": 3}, "table 'ids' has dim 2 in the checkpoint and 3 in this config"),
    ({"mlp": (4,)}, r"parameter 'mlp.0.weight'|shape"),
])
def test_incompatible_changes_are_refused(change, match, tmp_path):
    old = _trained(_config("deepfm", ["a"], ["x"]), tmp_path)
    args = {"kind": "deepfm", **change}
    new = Trainer(_config(args.pop("kind"), ["a"], ["x"], **args))
    with pytest.raises(ConfigError, match=match):
        warm_start(new, tmp_path / "checkpoints", previous=old.config)


def test_the_previous_config_must_be_the_checkpoints(tmp_path):
    _trained(_config("deepfm", ["a"], ["x"]), tmp_path)
    other = _config("deepfm", ["a", "b"], ["x"])
    with pytest.raises(IncompatibleFormatError, match="written for config"):
        warm_start(Trainer(other), tmp_path / "checkpoints", previous=other)
    with pytest.raises(ConfigError, match="no checkpoint found at"):
        warm_start(Trainer(other), tmp_path / "nothing", previous=other)


def test_freshrec_train_warm_start_prints_and_saves_the_report(tmp_path, capsys):
    """The old model (slots a b, dense x) warm-starts a new one (a d, dense y x) from the
    command line; the report says what was loaded, initialised and dropped."""
    old_cfg, new_cfg = _config("wide_deep", ["a", "b"], ["x"]), \
        _config("wide_deep", ["a", "d"], ["y", "x"])
    for name, cfg in (("old", old_cfg), ("new", new_cfg)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(dict(cfg.raw), sort_keys=False))
    pq.write_table(pa.Table.from_batches(_data(0)), tmp_path / "data.parquet")
    common = ["--data", str(tmp_path / "data.parquet"), "--format", "parquet", "--no-progress"]
    assert main(["train", "--config", str(tmp_path / "old.yaml"), "--run-dir",
                 str(tmp_path / "old"), *common]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "new.yaml"), "--run-dir",
                 str(tmp_path / "new"), "--warm-start", str(tmp_path / "old" / "checkpoints"),
                 "--warm-start-config", str(tmp_path / "old.yaml"), *common]) == 0
    out = capsys.readouterr().out
    assert "initialised: d, y" in out and "dropped: b" in out
    saved = json.loads((tmp_path / "new" / "warm_start.json").read_text())
    assert saved["initialised"] == ["d", "y"] and saved["dropped"] == ["b"]
    assert saved["tables_loaded"] == ["ids"] and saved["tables_fresh"] == ["d"]
    assert saved["repositioned"] == ["deep.0.weight", "wide.weight"]
    # without --warm-start-config the checkpoint must be of --config's features
    assert main(["train", "--config", str(tmp_path / "new.yaml"), "--run-dir",
                 str(tmp_path / "new2"), "--warm-start", str(tmp_path / "old" / "checkpoints"),
                 *common]) == 2
    assert "written for config" in capsys.readouterr().err


def test_a_warm_started_model_with_a_new_feature_starts_better_than_a_cold_one(tmp_path):
    """Simulator, joined: the old model (no context feature) trained on the first half; the
    new one adds the strong context feature u_ctx1. Warm from the old checkpoint and cold,
    both trained on the same 20 % of the rest, then scored on the last 30 %."""
    from freshrec.analysis.groundtruth import context_document, joined_examples
    from freshrec.analysis.permutation import score_auc
    from freshrec.data.simulate import SimulatorConfig
    from tests.analysis.test_groundtruth import sim_document

    sim = SimulatorConfig(seed=4, n_users=2000, n_items=800, candidates=20, bias=-2.5,
                          context_effects=(0.0, 1.0))
    table = joined_examples(sim, n_requests=1500)
    n = table.num_rows
    old_doc = sim_document()
    new_doc = context_document(old_doc, sim)
    for doc in (old_doc, new_doc):
        doc["train"]["importance_rate"] = 0.0
    old = Trainer(config_from_dict(old_doc, where="old"), run_dir=tmp_path / "old")
    old.fit(table.slice(0, n // 2).to_batches())
    old.save()
    aucs = {}
    for name in ("warm", "cold"):
        new = Trainer(config_from_dict(new_doc, where="new"))
        if name == "warm":
            report = warm_start(new, tmp_path / "old" / "checkpoints", previous=old.config)
            assert report.initialised == ("u_ctx0", "u_ctx1")
        new.fit(table.slice(n // 2, n // 5).to_batches())
        aucs[name] = score_auc(new, table.slice(n * 7 // 10))
    aucs["old"] = score_auc(old, table.slice(n * 7 // 10))
    assert aucs["warm"] > aucs["cold"] + 0.01, aucs
