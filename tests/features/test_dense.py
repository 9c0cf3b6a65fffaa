"""Dense normalisation against the formulas of :class:`~freshrec.features.DenseNorm`."""

from __future__ import annotations

import math

import numpy as np

from freshrec.features import DenseConfig, DenseNormalizer

FIELDS = [DenseConfig(name="a", fill=3.0), DenseConfig(name="b", norm="standard", mean=2, std=4),
          DenseConfig(name="c", norm="log", fill=-1), DenseConfig(name="d", norm="minmax", min=-2,
                                                                  max=6, fill=7)]
REFERENCE = [lambda x: x, lambda x: (x - 2) / 4, lambda x: math.log1p(max(x, 0.0)),
             lambda x: (x + 2) / 8]


def test_each_norm_is_its_formula_in_float64_and_missing_is_the_fill():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 100, (50, 4))
    x[rng.random((50, 4)) < 0.2] = np.nan
    norm = DenseNormalizer(FIELDS)
    got = norm(x)
    assert got.dtype == np.float32
    for j, (d, f) in enumerate(zip(FIELDS, REFERENCE, strict=True)):
        want = np.array([f(d.fill if math.isnan(v) else float(v)) for v in x[:, j]])
        np.testing.assert_array_equal(got[:, j], want.astype(np.float32), d.name)
        np.testing.assert_array_equal(norm.column(j, x[:, j]), want.astype(np.float32), d.name)


def test_all_log_and_no_fields():
    logs = DenseNormalizer([DenseConfig(name="a", norm="log"), DenseConfig(name="b", norm="log")])
    np.testing.assert_array_equal(logs(np.array([[np.e - 1, -5.0]])), [[1.0, 0.0]])
    assert DenseNormalizer([])(np.empty((3, 0))).shape == (3, 0)
