from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from freshrec.config import config_from_dict, load_config
from freshrec.errors import ConfigError, IncompatibleFormatError, InputError
from freshrec.train.trainer import Trainer


def _config(**train):
    return config_from_dict({
        "features": {
            "tables": {"user": {"dim": 8, "optimizer": {"kind": "adagrad", "lr": 0.1},
                                "ttl_s": 10_000},
                       "item": {"dim": 8, "optimizer": {"kind": "adagrad", "lr": 0.1}}},
            "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"}},
            "dense": {"x": {"norm": "none"}},
            "labels": ["click"]},
        "model": {"kind": "deepfm", "mlp": [16]},
        "train": {"batch_size": 128, "dense_lr": 0.01, **train},
    }, where="test")


def _stream(seed: int, n: int, n_users: int = 50, n_items: int = 40, base: float = -2.0,
            chunk: int = 500, t0: int = 0):
    """Clicks from a known logistic rule over user/item biases and a dense feature."""
    rng = np.random.default_rng(seed)
    ub = np.random.default_rng(123).normal(0, 1, n_users)
    ib = np.random.default_rng(456).normal(0, 1, n_items)
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    x = rng.normal(0, 1, n).astype(np.float32)
    p = 1 / (1 + np.exp(-(base + ub[users] + ib[items] + 0.5 * x)))
    y = (rng.random(n) < p).astype(np.float32)
    t = t0 + np.arange(n) // 10
    out = []
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        out.append(pa.RecordBatch.from_pydict({
            "user_id": users[sl], "item_id": items[sl], "x": x[sl], "click": y[sl],
            "event_time": t[sl]}))
    return out, p


def _state(trainer: Trainer):
    rows = {n: t.read_rows() for n, t in trainer.tables.items()}
    tables = {n: dict(zip(d.fids.tolist(), map(tuple, d.values.tolist()), strict=True))
              for n, d in rows.items()}
    return tables, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_learns_the_rule():
    data, _ = _stream(0, 20_000)
    summary = Trainer(_config()).fit(data)
    assert summary["examples"] == 20_000
    assert summary["auc_window"] > 0.7
    assert summary["user_entries"] == 50 and summary["item_entries"] == 40


def test_a_label_out_of_range_names_the_input_rows_and_the_row():
    """Batch training stops at a NaN label with an error naming the epoch, the input rows of
    the batch and the row in it (it stopped in the AUC, naming nothing)."""
    data, _ = _stream(0, 2_000)
    click = data[2].column("click").to_numpy().copy()
    click[234] = np.nan  # input row 1234: batch 9 (rows 1152-1279) of 128, its row 82
    data[2] = data[2].set_column(data[2].schema.get_field_index("click"), "click",
                                 pa.array(click))
    with pytest.raises(InputError, match=r"epoch 0, input rows 1152-1279: label column "
                                         r"'click': row 82 of the batch is missing "
                                         r"\(null\) or NaN"):
        Trainer(_config()).fit(data)



def test_a_diverged_model_stops_training_with_an_error_saying_so():
    """Tables trained by SGD at an absurd learning rate overflow: the model's output turns
    NaN. Training stops naming the step and the cause (it stopped in the AUC's input check,
    "y_pred must be probabilities"), and the batch is not trained on."""
    from freshrec.errors import TrainingDivergedError

    data, _ = _stream(0, 2_000)
    cfg = config_from_dict({
        "features": {
            "tables": {t: {"dim": 8, "optimizer": {"kind": "sgd", "lr": 1e30}}
                       for t in ("user", "item")},
            "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"}},
            "dense": {"x": {"norm": "none"}}, "labels": ["click"]},
        "model": {"kind": "deepfm", "mlp": [16]},
        "train": {"batch_size": 128, "dense_lr": 0.01}}, where="test")
    trainer = Trainer(cfg)
    with pytest.raises(TrainingDivergedError, match=r"step \d+: the model's output is NaN or "
                                                    r"infinite for \d+ of 128 examples, so "
                                                    r"its parameters diverged"):
        trainer.fit(data)

def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    data, _ = _stream(1, 6_000)
    full = Trainer(_config(epochs=2, checkpoint_every_steps=7), run_dir=tmp_path / "a")
    full.fit(data)

    first = Trainer(_config(epochs=2, checkpoint_every_steps=7, max_steps=60),
                    run_dir=tmp_path / "b")
    first.fit(data)
    assert first.step == 60
    resumed = Trainer(_config(epochs=2, checkpoint_every_steps=7), run_dir=tmp_path / "b")
    assert resumed.resume()
    assert resumed.step == 56  # the newest checkpoint (every 7 steps) before the stop
    resumed.fit(data)
    assert resumed.step == full.step and resumed.examples == full.examples
    # progressive metrics continue from the checkpoint: those of the uninterrupted run
    assert resumed.metrics.get() == pytest.approx(full.metrics.get(), rel=1e-9, nan_ok=True)
    t_full, d_full = _state(full)
    t_res, d_res = _state(resumed)
    assert t_full == t_res
    for k in d_full:
        assert torch.equal(d_full[k], d_res[k]), k


def _eager_prefetch(trainer: Trainer) -> list[int]:
    """Make the trainer's prefetches finish before the step goes on (the worst timing: a
    missing guard then fails loudly instead of depending on thread scheduling); returns the
    list of prefetched batches' event times."""
    emb = trainer.embedding
    prefetch = emb.prefetch
    calls: list[int] = []

    def eager(batch, now):
        prefetch(batch, now)
        emb._pending.future.result()
        calls.append(now)

    emb.prefetch = eager
    return calls


def _admitting_config(**train):
    """The test config with an item table that admits an id at its second occurrence."""
    raw = _config(**train).raw
    raw["features"]["tables"]["item"]["admission"] = {"min_count": 2}
    return config_from_dict(raw, where="test")


def test_pipelined_lookup_resumes_identically(tmp_path):
    # checkpoints are taken with no prefetch pending: a resumed run counts each id's
    # occurrences (admission) exactly once, as the uninterrupted run does
    data, _ = _stream(9, 4_000, n_items=3_000)
    full = Trainer(_admitting_config(checkpoint_every_steps=5), run_dir=tmp_path / "a")
    calls = _eager_prefetch(full)
    full.fit(data)
    assert calls  # the pipeline ran
    first = Trainer(_admitting_config(checkpoint_every_steps=5, max_steps=23),
                    run_dir=tmp_path / "b")
    _eager_prefetch(first)
    first.fit(data)
    resumed = Trainer(_admitting_config(checkpoint_every_steps=5), run_dir=tmp_path / "b")
    _eager_prefetch(resumed)
    assert resumed.resume() and resumed.step == 20
    resumed.fit(data)
    assert _state(full)[0] == _state(resumed)[0]
    assert full.tables["item"].stats().admitted == resumed.tables["item"].stats().admitted


def test_pipelined_lookup_changes_nothing(tmp_path):
    # expiry passes, checkpoints, down-sampled negatives and a max_steps stop all meet the
    # prefetched next batch; tables, dense weights, metrics and the stop are identical
    early, _ = _stream(7, 3_000, n_users=60)
    late, _ = _stream(8, 3_000, n_users=60, t0=20_000)
    runs = {}
    for pipe in (False, True):
        cfg = _config(pipeline_lookup=pipe, expire_every_s=50, checkpoint_every_steps=5,
                      negative_sample_rate=0.5, epochs=2, max_steps=68)
        trainer = Trainer(cfg, run_dir=tmp_path / str(pipe))
        calls = _eager_prefetch(trainer)
        summary = trainer.fit(early + late)
        stats = {n: t.stats() for n, t in trainer.tables.items()}
        summary["eval"] = trainer.evaluate(late[:2])  # nothing left pending after the stop
        runs[pipe] = (_state(trainer), summary, stats)
        assert bool(calls) == pipe
    (t0, d0), s0, st0 = runs[False]
    (t1, d1), s1, st1 = runs[True]
    assert s0 == s1 and s0["steps"] == 68
    assert t0 == t1
    for k in d0:
        assert torch.equal(d0[k], d1[k]), k
    assert {n: (s.admitted, s.expired) for n, s in st0.items()} == \
        {n: (s.admitted, s.expired) for n, s in st1.items()}
    assert st0["user"].expired > 0  # the expiry path was exercised


def test_the_trainer_draws_from_its_own_generator_and_leaves_the_process_alone():
    threads = torch.get_num_threads()
    raw = _config(threads=threads + 1).raw
    cfg = config_from_dict({**raw, "model": {"kind": "deepfm", "mlp": [16], "dropout": 0.3}})
    data, _ = _stream(4, 2_000)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    a = Trainer(cfg)
    a.fit(data)
    assert torch.get_num_threads() == threads  # threads are the CLI's to set
    assert torch.equal(torch.rand(4), expected)  # the global generator did not move
    b = Trainer(cfg)  # initialisation and dropout masks come from train.seed alone
    b.fit(data)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_save_without_a_run_dir_is_a_config_error():
    with pytest.raises(ConfigError, match="run_dir is None"):
        Trainer(_config()).save()


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    data, _ = _stream(2, 1_000)
    Trainer(_config(checkpoint_every_steps=2), run_dir=tmp_path).fit(data)
    other = config_from_dict({**_config().raw, "model": {"kind": "deepfm", "mlp": [8]}})
    with pytest.raises(IncompatibleFormatError, match="features or model changed"):
        Trainer(other, run_dir=tmp_path).resume()


@pytest.mark.parametrize("rate, correction", [(1.0, "logit"), (0.2, "logit"), (0.2, "weight")])
def test_calibration_holds_with_negative_down_sampling(rate, correction):
    train, _ = _stream(3, 60_000, base=-3.0)
    cfg = _config(negative_sample_rate=rate, correction=correction, epochs=2)
    trainer = Trainer(cfg)
    trainer.fit(train)
    if rate < 1:
        assert trainer.examples < 0.5 * 2 * 60_000  # negatives were really dropped
    test, _ = _stream(4, 20_000, base=-3.0)
    metrics = trainer.evaluate(test)
    assert abs(metrics["calibration"] - 1.0) < 0.1, metrics
    assert metrics["auc"] > 0.7


def test_expiry_runs_in_event_time():
    cfg = _config(expire_every_s=100, batch_size=100)  # batches never straddle early|late
    trainer = Trainer(cfg)
    early, _ = _stream(5, 2_000, n_users=50)
    # later users are a disjoint id range: the early ones expire after ttl_s=10_000
    late_rng = np.random.default_rng(6)
    n = 2_000
    late = [pa.RecordBatch.from_pydict({
        "user_id": late_rng.integers(1000, 1010, n), "item_id": late_rng.integers(0, 40, n),
        "x": np.zeros(n, np.float32), "click": (late_rng.random(n) < 0.2).astype(np.float32),
        "event_time": 50_000 + np.arange(n)})]
    trainer.fit(early + late)
    assert len(trainer.tables["user"]) == 10
    assert trainer.tables["user"].stats().expired == 50
    assert len(trainer.tables["item"]) == 40  # no ttl on items
    # without a publisher nothing exports deltas: the expired-fid log is not kept
    assert trainer.tables["user"].read_delta(0).expired.shape[0] == 0


def test_movielens_deepfm_reaches_a_sane_auc(shared_data, tmp_path):
    from freshrec.data.movielens import MovieLensReader

    cfg = load_config("configs/movielens.yaml", ["train.batch_size=512"])
    summary = Trainer(cfg).fit(lambda: MovieLensReader(shared_data / "ml-100k"))
    assert summary["examples"] == 100_000
    assert summary["auc"] > 0.7
