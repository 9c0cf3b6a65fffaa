"""Row-wise optimizers against torch.optim (dense, same rows) and numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.errors import ConfigError
from freshrec.table import EmbeddingTable, InitializerConfig, OptimizerConfig, TableConfig
from tests.table._reference import ADVERSARIAL_FIDS, dump_states, u64

DIM = 6
FIDS = u64(ADVERSARIAL_FIDS[:10])
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _table(**opt: object) -> EmbeddingTable:
    t = EmbeddingTable(TableConfig(
        name="t", dim=DIM, initializer=InitializerConfig(kind="uniform", scale=0.5, seed=3),
        optimizer=OptimizerConfig(**opt)))
    t.lookup(FIDS, now=0, train=True)
    return t


def _batches(rng: np.random.Generator, steps: int):
    """Per step: a shuffled batch where each fid appears 1-3 times, and its summed gradient."""
    for _ in range(steps):
        reps = rng.integers(1, 4, size=FIDS.shape[0])
        idx = rng.permutation(np.repeat(np.arange(FIDS.shape[0]), reps))
        grads = rng.normal(0, 1, size=(idx.shape[0], DIM)).astype(np.float32)
        summed = np.zeros((FIDS.shape[0], DIM), np.float32)
        np.add.at(summed, idx, grads)
        yield FIDS[idx], grads, summed


def _run_against_torch(t: EmbeddingTable, make_opt, steps: int = 12) -> torch.Tensor:
    param = torch.nn.Parameter(torch.from_numpy(t.lookup(FIDS).copy()))
    opt = make_opt([param])
    rng = np.random.default_rng(0)
    for fids, grads, summed in _batches(rng, steps):
        assert t.apply_gradients(fids, grads) == FIDS.shape[0]
        param.grad = torch.from_numpy(summed)
        opt.step()
        np.testing.assert_allclose(t.lookup(FIDS), param.detach().numpy(), **TOL)
    return opt


def test_sgd_matches_torch():
    t = _table(kind="sgd", lr=0.1, weight_decay=0.01)
    _run_against_torch(t, lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01))


@pytest.mark.parametrize(("eps", "acc", "wd"), [(1e-10, 0.0, 0.0), (1e-3, 0.5, 0.05)])
def test_adagrad_matches_torch(eps, acc, wd):
    t = _table(kind="adagrad", lr=0.1, eps=eps, initial_accumulator=acc, weight_decay=wd)
    opt = _run_against_torch(t, lambda p: torch.optim.Adagrad(
        p, lr=0.1, eps=eps, initial_accumulator_value=acc, weight_decay=wd))
    (state,) = opt.state.values()
    states = dump_states(t)
    got = np.stack([states[int(f)] for f in FIDS])
    np.testing.assert_allclose(got, state["sum"].numpy(), **TOL)


@pytest.mark.parametrize("kind, acc", [("adagrad", 0.0), ("rowwise_adagrad", 0.0),
                                       ("adam", 0.0)])
def test_zero_eps_that_would_write_nan_is_refused(kind, acc):
    # torch.optim.Adagrad(eps=0) turns a zero gradient into NaN parameters; the table
    # refuses the config instead of ever writing NaN
    with pytest.raises(ConfigError, match="eps"):
        OptimizerConfig(kind=kind, eps=0.0, initial_accumulator=acc)
    OptimizerConfig(kind="adagrad", eps=0.0, initial_accumulator=0.1)  # no 0/0: accepted


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_matches_torch(wd):
    t = _table(kind="adam", lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=wd)
    _run_against_torch(t, lambda p: torch.optim.Adam(
        p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd))


def _subsets(rng: np.random.Generator, steps: int):
    """Per step: a random subset of fids (some repeated), grads, and summed grads per fid."""
    for _ in range(steps):
        idx = rng.integers(0, FIDS.shape[0], size=rng.integers(1, 16))
        grads = rng.normal(0, 1, size=(idx.shape[0], DIM)).astype(np.float32)
        summed: dict[int, np.ndarray] = {}
        for i, g in zip(idx, grads, strict=True):
            summed[int(i)] = summed.get(int(i), np.zeros(DIM, np.float32)) + g
        yield FIDS[idx], grads, summed


def test_rowwise_adagrad_matches_numpy_reference():
    lr, eps, wd, acc0 = 0.1, 1e-8, 0.02, 0.1
    t = _table(kind="rowwise_adagrad", lr=lr, eps=eps, weight_decay=wd, initial_accumulator=acc0)
    w = t.lookup(FIDS).astype(np.float64)
    acc = np.full(FIDS.shape[0], acc0)
    rng = np.random.default_rng(1)
    for fids, grads, summed in _subsets(rng, 20):
        assert t.apply_gradients(fids, grads) == len(summed)
        for i, g in summed.items():
            g = g.astype(np.float64) + wd * w[i]
            acc[i] += np.mean(g * g)
            w[i] -= lr / (np.sqrt(acc[i]) + eps) * g
        np.testing.assert_allclose(t.lookup(FIDS), w, **TOL)
    states = dump_states(t)
    np.testing.assert_allclose([states[int(f)][0] for f in FIDS], acc, **TOL)


@pytest.mark.parametrize(("l1", "l2"), [(0.0, 0.0), (1.5, 0.1)])
def test_ftrl_matches_mcmahan_reference(l1, l2):
    alpha, beta = 0.2, 1.0
    t = _table(kind="ftrl", lr=alpha, beta=beta, l1=l1, l2=l2)
    w = t.lookup(FIDS).astype(np.float64)
    z = np.zeros_like(w)
    n = np.zeros_like(w)
    rng = np.random.default_rng(2)
    for fids, grads, summed in _subsets(rng, 20):
        assert t.apply_gradients(fids, grads) == len(summed)
        for i, g in summed.items():
            g = g.astype(np.float64)
            sigma = (np.sqrt(n[i] + g * g) - np.sqrt(n[i])) / alpha
            z[i] += g - sigma * w[i]
            n[i] += g * g
            w[i] = np.where(np.abs(z[i]) <= l1, 0.0,
                            -(z[i] - np.sign(z[i]) * l1) / ((beta + np.sqrt(n[i])) / alpha + l2))
        np.testing.assert_allclose(t.lookup(FIDS), w, **TOL)
    if l1 > 0:
        assert (t.lookup(FIDS) == 0).any(), "l1 should zero some weights"
    states = dump_states(t)
    np.testing.assert_allclose(np.stack([states[int(f)] for f in FIDS]),
                               np.concatenate([z, n], axis=1), **TOL)


KINDS = ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]


@pytest.mark.parametrize("kind", KINDS)
def test_duplicates_are_summed_into_one_step(kind):
    g1 = np.linspace(-1, 1, DIM, dtype=np.float32)
    g2 = np.linspace(2, -0.5, DIM, dtype=np.float32)
    dup, once, twice = (_table(kind=kind, lr=0.1) for _ in range(3))
    assert dup.apply_gradients(u64([FIDS[0], FIDS[1], FIDS[0]]),
                               np.stack([g1, g1, g2])) == 2
    once.apply_gradients(FIDS[[0, 1]], np.stack([g1 + g2, g1]))
    np.testing.assert_array_equal(dup.lookup(FIDS), once.lookup(FIDS))
    np.testing.assert_array_equal(np.stack(list(dump_states(dup).values())),
                                  np.stack(list(dump_states(once).values())))
    twice.apply_gradients(FIDS[[0]], g1[None])
    twice.apply_gradients(FIDS[[0]], g2[None])
    if kind != "sgd":   # SGD is linear: two steps equal one summed step
        assert not np.allclose(twice.lookup(FIDS[[0]]), once.lookup(FIDS[[0]]), rtol=1e-7,
                               atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_rows_are_rejected(kind, bad):
    t = _table(kind=kind, lr=0.1)
    t.apply_gradients(FIDS, np.ones((FIDS.shape[0], DIM), np.float32))   # non-trivial state
    before, states_before = t.lookup(FIDS), dump_states(t)
    grads = np.full((4, DIM), 0.5, np.float32)
    grads[1, 3] = bad
    grads[3, 0] = bad                  # FIDS[0] appears twice: its sum is non-finite
    fids = FIDS[[0, 1, 2, 0]]
    assert t.apply_gradients(fids, grads) == 1
    assert t.stats().nonfinite == 2
    after, states_after = t.lookup(FIDS), dump_states(t)
    np.testing.assert_array_equal(after[[0, 1]], before[[0, 1]])
    np.testing.assert_array_equal(after[3:], before[3:])
    assert not np.array_equal(after[2], before[2])
    for f in FIDS[[0, 1]]:
        np.testing.assert_array_equal(states_after[int(f)], states_before[int(f)])
    assert np.isfinite(after).all()


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_for_absent_fids_change_nothing(kind):
    t = _table(kind=kind, lr=0.1)
    before = t.lookup(FIDS)
    assert t.apply_gradients(u64([77, 78, 77]), np.ones((3, DIM), np.float32)) == 0
    np.testing.assert_array_equal(t.lookup(FIDS), before)
    assert len(t) == FIDS.shape[0] and (t.find(u64([77, 78])) == -1).all()


def test_accepts_float64_and_torch_gradients():
    a, b = _table(kind="adagrad"), _table(kind="adagrad")
    small = FIDS[FIDS < 2**63]        # torch has no uint64 ids: int64 ones must be >= 0
    g = np.random.default_rng(3).normal(size=(small.shape[0], DIM))
    a.apply_gradients(small, g)
    b.apply_gradients(torch.from_numpy(small.astype(np.int64)),
                      torch.from_numpy(g.astype(np.float32)))
    np.testing.assert_array_equal(a.lookup(FIDS), b.lookup(FIDS))
