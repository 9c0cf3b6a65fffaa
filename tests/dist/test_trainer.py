"""N gloo ranks on the slices of a global batch train the model one process trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from freshrec.train.trainer import Trainer
from tests.dist.ranks import batches, config, merged, run_ranks, table_state


@pytest.mark.parametrize("world", [3])
def test_ranks_equal_one_process(tmp_path: Path, world: int) -> None:
    run_ranks(world, "equivalence", tmp_path)
    for opt in ("sgd", "rowwise_adagrad"):
        single = Trainer(config(opt))
        expect = single.fit(batches(600))
        want = table_state(single.tables)
        parts = [dict(np.load(tmp_path / f"{opt}-rank{r}.npz")) for r in range(world)]
        for name in ("user", "item"):
            got = merged(parts, name)
            ref = {k: want[f"{name}.{k}"] for k in ("fids", "values", "states", "last_seen")}
            np.testing.assert_array_equal(got["fids"], ref["fids"])
            np.testing.assert_array_equal(got["last_seen"], ref["last_seen"])
            np.testing.assert_allclose(got["values"], ref["values"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(got["states"], ref["states"], atol=1e-5, rtol=1e-6)
        assert single.tables["user"].stats().expired > 0  # expiry ran, and matched
        assert single.tables["user"].stats().rejected > 0  # admission held some users back
        for r in range(world):
            for k, v in single.model.state_dict().items():
                np.testing.assert_allclose(parts[r][f"dense.{k}"], v.numpy(), atol=1e-5, rtol=0)
            summary = json.loads((tmp_path / f"{opt}-rank{r}.json").read_text())
            assert summary["examples"] * world == pytest.approx(expect["examples"], abs=world)
            assert summary["auc"] == pytest.approx(expect["auc"], abs=1e-6)
