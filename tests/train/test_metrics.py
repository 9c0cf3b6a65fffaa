"""Tests of freshrec.train.metrics against scikit-learn on random data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from freshrec.errors import IncompatibleFormatError, InputError
from freshrec.train.metrics import (
    AUC,
    Calibration,
    LogLoss,
    MetricSet,
    Windowed,
    default_metrics,
)


def _data(seed: int, n: int = 20_000, skew: bool = False):
    rng = np.random.default_rng(seed)
    score = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(score * 1.5 - (3 if skew else 0))))).astype(np.int64)
    p = 1 / (1 + np.exp(-(score - (3 if skew else 0)) + rng.normal(scale=0.5, size=n)))
    return y, p, rng.random(n) * 3


def _feed(metric, y, p, w=None, parts=7):
    for idx in np.array_split(np.arange(y.size), parts):
        metric.update(y[idx], p[idx], None if w is None else w[idx])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("skew", [False, True])
def test_auc_matches_sklearn(seed, skew):
    y, p, w = _data(seed, skew=skew)
    auc = AUC()
    _feed(auc, y, p)
    assert auc.get() == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert auc.error_bound() < 1e-4
    weighted = AUC()
    _feed(weighted, y, p, w)
    assert weighted.get() == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-4)


def test_auc_exact_mode_and_ties_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 5000)
    p = rng.integers(0, 20, 5000) / 20.0  # many ties
    auc = AUC(bins=None)
    _feed(auc, y, p)
    assert auc.get() == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auc.error_bound() == 0.0
    binned = AUC()
    _feed(binned, y, p)
    assert binned.get() == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_error_bound_holds_with_coarse_bins():
    y, p, _ = _data(4, n=5000)
    auc = AUC(bins=16)
    auc.update(y, p)
    exact = roc_auc_score(y, p)
    assert auc.error_bound() > 1e-3  # coarse: bound is not trivial
    assert abs(auc.get() - exact) <= auc.error_bound() + 1e-12


def test_auc_handles_extreme_probabilities_in_order():
    auc = AUC(bins=None)
    auc.update(np.array([0, 1, 0, 1]), np.array([0.0, 1e-12, 0.5, 1.0]))
    assert auc.get() == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.0, 1e-12, 0.5, 1.0]))


def test_auc_one_class_is_nan():
    auc = AUC()
    assert math.isnan(auc.get())
    auc.update(np.ones(10), np.linspace(0, 1, 10))
    assert math.isnan(auc.get())
    assert repr(auc) == "AUC: nan"
    auc.update(np.zeros(1), np.array([0.5]))
    assert auc.get() == pytest.approx(roc_auc_score([1] * 10 + [0], [*np.linspace(0, 1, 10), 0.5]))


def test_logloss_matches_sklearn_weighted_and_not():
    y, p, w = _data(5)
    m, mw = LogLoss(), LogLoss()
    _feed(m, y, p)
    _feed(mw, y, p, w)
    assert m.get() == pytest.approx(log_loss(y, p), rel=1e-9)
    assert mw.get() == pytest.approx(log_loss(y, p, sample_weight=w), rel=1e-9)
    assert m.bigger_is_better is False


def test_logloss_clips_certain_mistakes():
    m = LogLoss()
    m.update(np.array([1.0]), np.array([0.0]))
    assert m.get() == pytest.approx(-math.log(1e-15))


def test_calibration_weighted():
    y, p, w = _data(6)
    c, cw = Calibration(), Calibration()
    _feed(c, y, p)
    _feed(cw, y, p, w)
    assert c.get() == pytest.approx(p.sum() / y.sum())
    assert cw.get() == pytest.approx((p * w).sum() / (y * w).sum())
    empty = Calibration()
    empty.update(np.zeros(3), np.full(3, 0.2))
    assert math.isnan(empty.get())


def test_repr_reads_name_and_value():
    m = LogLoss()
    m.update(np.array([1, 0]), np.array([0.5, 0.5]))
    assert repr(m) == "LogLoss: 0.6931"
    assert AUC.bigger_is_better is True


@pytest.mark.parametrize(
    ("y", "p", "w", "match"),
    [
        ([0, 1], [0.5], None, "y_pred has 1"),
        ([0, 2], [0.5, 0.5], None, "y_true must be in"),
        ([0, 1], [0.5, 1.5], None, r"y_pred must be probabilities in \[0, 1\], got 1.5"),
        ([0, 1], [0.5, float("nan")], None, "y_pred must be"),
        ([0, 1], [0.5, 0.5], [1.0], "weight has 1"),
        ([0, 1], [0.5, 0.5], [1.0, -1.0], "weight must be finite"),
    ],
)
@pytest.mark.parametrize("cls", [AUC, LogLoss, Calibration])
def test_bad_inputs_are_named(cls, y, p, w, match):
    with pytest.raises(InputError, match=match):
        cls().update(np.array(y), np.array(p), None if w is None else np.array(w))


def test_merge_equals_single_stream():
    y, p, w = _data(7, n=3000)
    for proto in (AUC(), LogLoss(), Calibration()):
        a, b, whole = proto.clone(), proto.clone(), proto.clone()
        a.update(y[:1000], p[:1000], w[:1000])
        b.update(y[1000:], p[1000:], w[1000:])
        whole.update(y, p, w)
        a.merge(b)
        assert a.get() == pytest.approx(whole.get(), rel=1e-12)
    with pytest.raises(InputError, match="expected a AUC"):
        AUC().merge(LogLoss())
    with pytest.raises(InputError, match="bins differ"):
        AUC().merge(AUC(bins=8))


def test_windowed_keeps_only_last_window():
    rng = np.random.default_rng(8)
    w = Windowed(AUC(), window_s=100, bucket_s=10)
    ys, ps, ts = [], [], []
    for t in range(0, 300, 5):
        y = rng.integers(0, 2, 50)
        # the relation between label and prediction flips at t = 200
        p = np.clip(0.5 + (0.3 if t < 200 else -0.3) * (y - 0.5) + rng.normal(0, 0.2, 50), 0, 1)
        w.update(y, p, now=t)
        ys.append(y)
        ps.append(p)
        ts.append(np.full(50, t))
    y, p, t = np.concatenate(ys), np.concatenate(ps), np.concatenate(ts)
    in_window = (t // 10) > (295 // 10) - 10  # buckets 20..29: t in [200, 300)
    assert w.get() == pytest.approx(roc_auc_score(y[in_window], p[in_window]), abs=1e-4)
    assert w.get() < 0.3  # only the flipped period
    assert len(w._buckets) <= 10
    # evaluated later, older buckets leave the window
    later = (t // 10) > (345 // 10) - 10
    assert w.get(now=345) == pytest.approx(roc_auc_score(y[later], p[later]), abs=1e-4)
    assert math.isnan(w.get(now=1000))


def test_windowed_ignores_updates_older_than_the_window():
    w = Windowed(Calibration(), window_s=10, bucket_s=10)
    w.update(np.array([1]), np.array([0.5]), now=100)
    w.update(np.array([1]), np.array([0.1]), now=50)  # too late, dropped
    assert w.get() == pytest.approx(0.5)
    w.update(np.array([1]), np.array([0.3]), now=105)  # same bucket
    assert w.get() == pytest.approx(0.4)
    assert repr(w) == "Calibration@10s: 0.4000"


def test_windowed_validates():
    with pytest.raises(InputError, match="window_s must be"):
        Windowed(AUC(), window_s=0)
    with pytest.raises(InputError, match="bucket_s must be"):
        Windowed(AUC(), window_s=10, bucket_s=20)
    with pytest.raises(InputError, match="now must be"):
        Windowed(AUC(), window_s=10).update(np.array([1]), np.array([0.5]), now=float("nan"))


def test_metric_set_flat_dict():
    y, p, w = _data(9, n=4000)
    ms = MetricSet()
    _feed(ms, y, p, w)
    out = ms.get()
    assert set(out) == {"auc", "logloss", "calibration", "count"}
    assert out["count"] == 4000.0
    assert out["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-4)
    assert out["logloss"] == pytest.approx(log_loss(y, p, sample_weight=w))
    assert "AUC: " in repr(ms) and "count: 4000" in repr(ms)


def test_default_metrics_windowed_requires_now():
    ms = default_metrics(window_s=60)
    with pytest.raises(InputError, match="pass now="):
        ms.update(np.array([1, 0]), np.array([0.9, 0.1]))
    ms.update(np.array([1, 0]), np.array([0.9, 0.1]), now=0)
    ms.update(np.array([1, 0]), np.array([0.1, 0.9]), now=120)
    out = ms.get()
    assert out["auc"] == pytest.approx(0.5)
    assert out["auc_window"] == pytest.approx(0.0)
    fresh = ms.clone().get()
    assert fresh["count"] == 0.0 and math.isnan(fresh["auc"])
    with pytest.raises(InputError, match="reserved"):
        MetricSet({"count": AUC()})


@pytest.mark.parametrize("proto", [AUC(), AUC(bins=None), LogLoss(), Calibration(),
                                   Windowed(AUC(), window_s=100, bucket_s=10)],
                         ids=["auc", "auc-exact", "logloss", "calibration", "windowed"])
def test_a_restored_state_continues_as_the_stream_would(proto):
    y, p, w = _data(10, n=6000)
    t = np.arange(6000) // 30
    whole, first = proto.clone(), proto.clone()

    def feed(m, start, stop):
        for i in range(start, stop, 500):
            kw = {"now": int(t[i + 499])} if isinstance(m, Windowed) else {}
            m.update(y[i:i + 500], p[i:i + 500], w[i:i + 500], **kw)

    feed(whole, 0, 6000)
    feed(first, 0, 2500)
    restored = proto.clone()
    restored.load_state({k: v.copy() for k, v in first.state().items()})
    assert restored.get() == first.get()
    feed(restored, 2500, 6000)
    assert restored.get() == pytest.approx(whole.get(), rel=1e-12)


def test_a_metric_set_state_restores_every_metric_and_the_count():
    y, p, w = _data(11, n=3000)
    ms = default_metrics(window_s=600)
    for i, idx in enumerate(np.array_split(np.arange(3000), 6)):
        ms.update(y[idx], p[idx], w[idx], now=100 * i)
    arrays, meta = ms.state()
    assert all(a.ndim == 1 for a in arrays.values())
    json.dumps(meta)  # the rest is plain JSON: nothing is pickled
    restored = default_metrics(window_s=600)
    restored.load_state(arrays, meta)
    assert restored.get() == pytest.approx(ms.get(), nan_ok=True)
    assert restored.get()["count"] == 3000.0


def test_a_state_of_other_metrics_is_refused_and_changes_nothing():
    ms = default_metrics(window_s=600)
    ms.update(np.array([0, 1]), np.array([0.2, 0.7]), now=0)
    arrays, meta = ms.state()
    other = default_metrics(window_s=60)
    with pytest.raises(IncompatibleFormatError, match="the state is of metrics"):
        other.load_state(arrays, meta)
    assert other.get()["count"] == 0.0
    mine = default_metrics(window_s=600)
    broken = {k: v for k, v in arrays.items() if not k.endswith(".pos")}
    with pytest.raises(IncompatibleFormatError, match="AUC.load_state: no array 'pos'"):
        mine.load_state(broken, meta)
    assert mine.get()["count"] == 0.0 and math.isnan(mine.get()["auc"])
    with pytest.raises(IncompatibleFormatError, match="count must be an int"):
        mine.load_state(arrays, {**meta, "count": -1})
    with pytest.raises(IncompatibleFormatError, match="must hold 2 values"):
        LogLoss().load_state({"sums": np.zeros(3)})
