"""Table configs: validation, dict round trip, fingerprints, state sizes."""

from __future__ import annotations

import dataclasses

import pytest

from freshrec.errors import ConfigError
from freshrec.table import (
    AdmissionConfig,
    InitializerConfig,
    InitKind,
    OptimizerConfig,
    OptimizerKind,
    TableConfig,
    table_config_from_dict,
)


@pytest.mark.parametrize(("build", "match"), [
    (lambda: TableConfig(name="u", dim=0), r"TableConfig 'u': dim must be an int in \[1, 4096\]"),
    (lambda: TableConfig(name="u", dim=4.0), "dim must be"),
    (lambda: TableConfig(name="u", dim=True), "dim must be"),
    (lambda: TableConfig(name="not valid", dim=4), "name must be an identifier"),
    (lambda: TableConfig(name="u", dim=4, ttl_s=0), "ttl_s must be an int >= 1 or null, got 0"),
    (lambda: TableConfig(name="u", dim=4, max_load=0.95), "max_load must be"),
    (lambda: TableConfig(name="u", dim=4, capacity_hint=0), "capacity_hint must be"),
    (lambda: OptimizerConfig(kind="rmsprop"), "kind must be one of"),
    (lambda: OptimizerConfig(lr=-1.0), "lr must be a number >= 0, got -1.0"),
    (lambda: OptimizerConfig(beta1=1.0), r"beta1 must be a number in \[0, 1\)"),
    (lambda: InitializerConfig(kind="xavier"), "kind must be one of"),
    (lambda: InitializerConfig(std=-0.1), "std must be"),
    (lambda: InitializerConfig(seed=-1), "seed must be"),
    (lambda: AdmissionConfig(min_count=0), "min_count must be an int >= 1"),
    (lambda: AdmissionConfig(probability=0.0), r"probability must be a number in \(0, 1\]"),
    (lambda: AdmissionConfig(sketch_width=8), "sketch_width must be"),
    (lambda: AdmissionConfig(sketch_depth=17), "sketch_depth must be"),
])
def test_invalid_values_are_refused_with_the_field_named(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_enums_are_coerced_from_strings():
    cfg = TableConfig(name="u", dim=4, initializer=InitializerConfig(kind="normal"),
                      optimizer=OptimizerConfig(kind="ftrl"))
    assert cfg.initializer.kind is InitKind.NORMAL
    assert cfg.optimizer.kind is OptimizerKind.FTRL


@pytest.mark.parametrize(("kind", "size"), [("sgd", 0), ("adagrad", 7), ("rowwise_adagrad", 1),
                                            ("adam", 15), ("ftrl", 14)])
def test_state_dim(kind, size):
    assert TableConfig(name="u", dim=7, optimizer=OptimizerConfig(kind=kind)).state_dim == size


def test_dict_round_trip():
    cfg = TableConfig(name="item", dim=8, ttl_s=3600, capacity_hint=99, max_load=0.5,
                      initializer=InitializerConfig(kind="normal", std=0.2, seed=3),
                      optimizer=OptimizerConfig(kind="adam", lr=0.002, beta2=0.98),
                      admission=AdmissionConfig(min_count=3, probability=0.5))
    assert table_config_from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["optimizer"]["kind"] == "adam"


@pytest.mark.parametrize(("data", "match"), [
    ({"name": "u", "dim": 4, "ttl": 5}, r"where: unknown key 'ttl'"),
    ({"name": "u", "dim": 4, "optimizer": {"kind": "sgd", "lrr": 1}},
     r"where\.optimizer: unknown key 'lrr'"),
    ({"name": "u", "dim": 4, "admission": {"min_count": 0}}, r"where\.admission: .*min_count"),
    ({"name": "u"}, "'name' and 'dim' are required"),
    ({"name": "u", "dim": 4, "initializer": [1]}, r"where\.initializer: expected a mapping"),
])
def test_from_dict_errors_name_the_location(data, match):
    with pytest.raises(ConfigError, match=match):
        table_config_from_dict(data, where="where")


def test_fingerprint_depends_on_layout_only():
    base = TableConfig(name="u", dim=4)
    same = dataclasses.replace(base, ttl_s=5, optimizer=OptimizerConfig(lr=0.5),
                               initializer=InitializerConfig(seed=9))
    assert base.fingerprint() == same.fingerprint()
    others = [dataclasses.replace(base, name="v"), dataclasses.replace(base, dim=5),
              dataclasses.replace(base, optimizer=OptimizerConfig(kind="adam"))]
    prints = {c.fingerprint() for c in others}
    assert len(prints) == 3 and base.fingerprint() not in prints


def test_admits_all():
    assert AdmissionConfig().admits_all
    assert not AdmissionConfig(min_count=2).admits_all
    assert not AdmissionConfig(probability=0.5).admits_all
