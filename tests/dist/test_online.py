"""Distributed online training: each rank trains its partitions of the examples log; the
ranks together train every example once, as one process on the same global batches, and
a SIGKILL of a rank under torchrun's restarts loses and doubles nothing."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import yaml

from freshrec.sync import Registry, Subscriber
from tests.dist.ranks import (
    assert_same_model,
    checkpoint_state,
    cli,
    config,
    merged,
    online_reference,
    table_state,
    write_examples_log,
)
from tests.dist.test_checkpoint import run_signalled, train_killing_rank_1
from tests.dist.test_publish import Follower

ROWS = 1200


def _setup(tmp_path: Path, sync: dict[str, float] | None = None, **online: object
           ) -> tuple[Path, Path]:
    """The config document (online section ``online``, sync section ``sync``) and the
    4-partition examples log."""
    cfg = config("rowwise_adagrad")
    raw = {**cfg.raw, "online": {"max_records": 8, **online}, "sync": sync or {}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_examples_log(tmp_path / "log", ROWS)
    return tmp_path / "cfg.yaml", tmp_path / "log"


def _reference(doc: Path, log: Path, world: int) -> object:
    from freshrec.config import config_from_dict
    from freshrec.stream.open import open_log

    cfg = config_from_dict(yaml.safe_load(doc.read_text()), where=str(doc))
    return online_reference(cfg, open_log(f"file:{log}"), world)


def _ends(log: Path) -> dict[str, int]:
    from freshrec.stream.open import open_log

    source = open_log(f"file:{log}")
    return {str(p): source.end_offset(p) for p in range(source.partitions)}


def test_two_ranks_under_torchrun_train_each_example_once_and_publish_one_model(
        tmp_path: Path) -> None:
    doc, log = _setup(tmp_path, sync={"sparse_interval_s": 0})  # a delta every round
    run, registry = tmp_path / "run", tmp_path / "registry"
    follower = Follower(Registry(registry))  # a server following the run as it publishes
    follower.start()
    try:
        done = cli(["train", "--online", "--config", str(doc), "--source", f"file:{log}",
                    "--registry", str(registry), "--run-dir", str(run), "--idle-timeout",
                    "1", "--no-progress"], torchrun=2)
    finally:
        follower.done.set()
        follower.join(timeout=60)
    assert follower.error is None, follower.error
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-2])
    assert summary["ranks"] == 2 and summary["examples"] == ROWS and summary["count"] == ROWS
    assert summary["offsets"] == _ends(log)  # every partition read to its end
    assert summary["rejected"] == 0
    parts, dense, world = checkpoint_state(run)
    assert world == 2
    # the ranks' model is one process's on the same global batches (rank 1, with an eighth
    # of the examples, padded its share of most steps with empty batches): each example once
    assert_same_model(parts, dense, _reference(doc, log, 2))
    # a subscriber of the registry sees one model: the union of the shards
    manifests = Registry(registry).manifests()
    assert len(manifests) > 5  # a full snapshot, a delta per round, the dense part
    assert sum(d["expired"] for m in manifests for d in m.deltas.values()) > 0  # TTL expiry
    state = Subscriber(Registry(registry)).materialize()
    served = table_state(state.tables)
    for name in ("user", "item"):
        shards = merged(parts, name)
        np.testing.assert_array_equal(served[f"{name}.fids"], shards["fids"])
        np.testing.assert_array_equal(served[f"{name}.values"], shards["values"])
    for k, v in state.dense.items():
        np.testing.assert_array_equal(v.numpy(), dense[k])
    # each version in parts (one per rank); the follower, updated in place version after
    # version, holds the same model
    assert all(m.parts == 2 for m in manifests)
    assert len(follower.seen) >= 2 and follower.seen[-1] == manifests[-1].version
    followed = table_state(follower.tables)
    for name in ("user", "item"):
        order = np.argsort(followed[f"{name}.fids"])
        np.testing.assert_array_equal(followed[f"{name}.fids"][order],
                                      served[f"{name}.fids"])
        np.testing.assert_array_equal(followed[f"{name}.values"][order],
                                      served[f"{name}.values"])


def test_sigkill_of_a_rank_resumes_from_checkpointed_offsets(tmp_path: Path) -> None:
    doc, log = _setup(tmp_path, checkpoint_every_s=0)
    run = tmp_path / "run"
    summary = train_killing_rank_1(run, "--online", "--config", str(doc), "--source",
                                   f"file:{log}", "--idle-timeout", "1")
    assert summary["examples"] == ROWS and summary["count"] == ROWS  # none lost or doubled
    assert summary["offsets"] == _ends(log)
    parts, dense, world = checkpoint_state(run)
    assert world == 2
    assert_same_model(parts, dense, _reference(doc, log, 2))


def test_sigterm_to_one_rank_stops_every_rank_at_one_checkpoint_and_restart_is_exact(
        tmp_path: Path) -> None:
    doc, log = _setup(tmp_path, max_records=2, checkpoint_every_s=0)
    run, registry = tmp_path / "run", tmp_path / "registry"
    args = ["train", "--online", "--config", str(doc), "--source", f"file:{log}",
            "--registry", str(registry), "--run-dir", str(run), "--idle-timeout", "1",
            "--no-progress"]
    stopped = run_signalled(args, run, signal.SIGTERM, rank=1, torchrun=True)
    # rank 1 got it, both ranks stopped after the same round, checkpointed, published and
    # ended normally: so did torchrun
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    summary = json.loads(stopped.stdout.splitlines()[-2])
    assert summary["interrupted"] is True and 0 < summary["examples"] < ROWS
    parts, _, world = checkpoint_state(run)
    assert world == 2
    reg = Registry(registry)
    assert reg.manifest().meta["examples"] == summary["examples"]  # published at the stop
    done = cli(args, torchrun=2)  # restarted: resumes from the offsets of that checkpoint
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(done.stdout.splitlines()[-2])
    assert final["examples"] == ROWS and "interrupted" not in final
    assert final["offsets"] == _ends(log)
    parts, dense, world = checkpoint_state(run)
    assert_same_model(parts, dense, _reference(doc, log, 2))
    state = Subscriber(reg).materialize()
    np.testing.assert_array_equal(table_state(state.tables)["item.values"],
                                  merged(parts, "item")["values"])
