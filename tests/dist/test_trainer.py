"""N gloo ranks on the slices of a global batch train the model one process trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from freshrec.train.trainer import Trainer
from tests.dist.ranks import assert_same_model, batches, config, run_ranks


@pytest.mark.parametrize("world", [3])
def test_ranks_equal_one_process(tmp_path: Path, world: int) -> None:
    run_ranks(world, "equivalence", tmp_path)
    for opt in ("sgd", "rowwise_adagrad"):
        single = Trainer(config(opt))
        expect = single.fit(batches(600))
        parts = [dict(np.load(tmp_path / f"{opt}-rank{r}.npz")) for r in range(world)]
        assert single.tables["user"].stats().expired > 0  # expiry ran, and matched
        assert single.tables["user"].stats().rejected > 0  # admission held some users back
        for r in range(world):
            dense = {k[len("dense."):]: v for k, v in parts[r].items() if k.startswith("dense.")}
            assert_same_model(parts, dense, single)
            summary = json.loads((tmp_path / f"{opt}-rank{r}.json").read_text())
            assert summary["examples"] * world == pytest.approx(expect["examples"], abs=world)
            assert summary["auc"] == pytest.approx(expect["auc"], abs=1e-6)
            # steps not followed by an expiry pass had their lookups started a step ahead
            assert 0 < summary["pipelined"] < 10
