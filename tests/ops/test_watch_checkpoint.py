"""``freshrec watch`` resumes from its checkpoint.

Generated logs (impressions with the served scores, and the joiner's examples 30 s behind
them) are written in stages: eight windows of version 1 ranking well, then version 2 whose
scores are inverted, which the guard rolls back after ``patience`` bad windows. A watcher
stopped between two stages (in process, and a real ``freshrec watch`` killed with SIGKILL
then stopped with SIGTERM) and restarted from its checkpoint measures the same windows and
takes the same rollback decision as one that never stopped; a damaged checkpoint stops the
watcher with an error naming the file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from freshrec.config import FreshrecConfig, config_from_dict
from freshrec.errors import InputError
from freshrec.ops.alerts import Watcher
from freshrec.ops.collect import Collector
from freshrec.ops.serving import WatchCheckpoint
from freshrec.stream.events import encode_examples, examples_to_record_batch
from freshrec.stream.open import open_log
from tests.ops.conftest import ROOT, model_doc

WINDOW_S = 60.0
STAGES = 10  # of one window each: versions 1 (good) in 0..5, 2 (inverted) from 6
LAG_S = 30.0  # the joiner writes the examples of an impression this much later


def _stage_records(k: int) -> tuple[list[bytes], list[dict[str, Any]]]:
    """The impressions of window ``k`` (t in [60k, 60k + 60)) and their examples."""
    rng = np.random.default_rng(k)
    version = 1 if k < 6 else 2
    imps, rows = [], []
    for i in range(24):
        t = WINDOW_S * k + i * 2.5
        labels = (rng.random(5) < 0.3).astype(float)
        good = np.clip(0.25 + 0.5 * labels + rng.normal(0, 0.2, 5), 0.01, 0.99)
        scores = (good if version == 1 else 1.0 - good).round(6).tolist()
        imps.append(orjson.dumps({"type": "impression", "request_id": f"r{k}-{i}",
                                  "timestamp": t, "model_version": version,
                                  "scores": scores}))
        rows += [{"request_id": f"r{k}-{i}", "position": j, "event_time": t,
                  "click": float(labels[j])} for j in range(5)]
    if k == 0:  # an impression of an older server, without scores
        imps.append(orjson.dumps({"type": "impression", "request_id": "old",
                                  "timestamp": 1.0}))
    return imps, rows


class Logs:
    """The two logs, written stage by stage: stage ``k`` appends window ``k``'s impressions
    and the examples of every impression older than its end minus ``LAG_S``."""

    def __init__(self, root: Path) -> None:
        self.events_spec, self.examples_spec = f"file:{root}/ev", f"file:{root}/ex"
        self.events = open_log(self.events_spec, partitions=2)
        self.examples = open_log(self.examples_spec)
        self.rows: list[dict[str, Any]] = []
        self.written = 0

    def stage(self, k: int) -> None:
        imps, rows = _stage_records(k)
        self.events.append(imps[: len(imps) // 2], partition=0)
        self.events.append(imps[len(imps) // 2:], partition=1)
        self.rows += rows
        due = [r for r in self.rows[self.written:]
               if r["event_time"] < WINDOW_S * (k + 1) - LAG_S or k == STAGES - 1]
        for at in range(0, len(due), 37):  # the joiner's batches
            self.examples.append([encode_examples(examples_to_record_batch(due[at:at + 37]))])
        self.written += len(due)

    def ends(self) -> tuple[list[int], list[int]]:
        return ([self.events.end_offset(p) for p in range(2)],
                [self.examples.end_offset(0)])

    def close(self) -> None:
        self.events.close()
        self.examples.close()


def _doc(logs: Logs, **ops: Any) -> dict[str, Any]:
    return model_doc(["item_id"], join={"source": logs.events_spec,
                                        "output": logs.examples_spec},
                     ops={"rollback": {"enabled": True, "window_s": WINDOW_S,
                                       "min_examples": 50, "patience": 2,
                                       "max_auc_drop": 0.05}, **ops})


def _watcher(cfg: FreshrecConfig) -> Watcher:
    return Watcher(cfg, Collector(cfg), sinks=[])


def _serving(w: Watcher) -> Any:
    """The watcher's serving summary as the CLI prints it (NaN-free, through JSON)."""
    return json.loads(json.dumps(w.status()["serving"]))


def _uninterrupted(tmp: Path) -> Any:
    logs = Logs(tmp / "straight")
    w = _watcher(config_from_dict(_doc(logs)))
    for k in range(STAGES):
        logs.stage(k)
        w.check()
    logs.close()
    got = _serving(w)
    # the run the others are compared with: every window, one rollback 1 <- 2 after the
    # second bad window, the windows of version 2 after it recorded but not judged
    assert len(got["windows"]) == STAGES - 1
    assert [r["to_version"] for r in got["rollbacks"]] == [1]
    assert [x["good"] for x in got["windows"]] == [True] * 6 + [False, False, None]
    assert got["unscored"] == 1 and got["unmatched"] == 0 and got["matched"] == STAGES * 120
    return got


@pytest.mark.parametrize("stop_after", [3, 7])
def test_a_restarted_watcher_measures_and_decides_as_one_that_never_stopped(
        tmp_path: Path, stop_after: int) -> None:
    """Stopped with impressions waiting for their examples and a window open (and, after
    stage 7, one bad window into the streak of two), then restarted from the checkpoint."""
    straight = _uninterrupted(tmp_path)
    logs = Logs(tmp_path / "stopped")
    cfg = config_from_dict(_doc(logs))
    first = _watcher(cfg)
    for k in range(stop_after + 1):
        logs.stage(k)
        first.check()
    serving = first.collector.serving
    assert serving is not None and serving.scores.pending > 0
    assert serving.guard.bad_streak == (1 if stop_after == 7 else 0)
    WatchCheckpoint(tmp_path / "state").write(first)
    second = _watcher(cfg)
    assert WatchCheckpoint(tmp_path / "state").restore(second)
    assert second.collector.serving is not None
    assert second.collector.serving.state() == serving.state()
    # the control: a restart that takes up the read positions but not the guard's state
    # has, when stopped mid-streak, no reference windows left and never judges the
    # inverted version bad
    forgetful = _watcher(cfg)
    assert forgetful.collector.serving is not None
    forgetful.collector.serving.scores.restore(serving.scores.state())
    for k in range(stop_after + 1, STAGES):
        logs.stage(k)
        second.check()
        forgetful.check()
    logs.close()
    assert _serving(second) == straight
    assert len(_serving(forgetful)["rollbacks"]) == (0 if stop_after == 7 else 1)
    assert len(_serving(forgetful)["windows"]) == len(straight["windows"]) - stop_after


def test_no_checkpoint_and_a_damaged_one(tmp_path: Path) -> None:
    logs = Logs(tmp_path / "logs")
    logs.stage(0)
    logs.stage(1)
    cfg = config_from_dict(_doc(logs))
    w = _watcher(cfg)
    assert not WatchCheckpoint(tmp_path / "none").restore(w)  # nothing to resume: no error
    w.check()
    ckpt = WatchCheckpoint(tmp_path / "state")
    ckpt.write(w)
    good = ckpt.path.read_bytes()
    for damage in (good[: len(good) // 2], b"\x00" * 40, b"[]",
                   good.replace(b'"v": 1', b'"v": 7'),
                   good.replace(b'"bad_streak": 0', b'"bad_streak": "x"')):
        assert damage != good
        ckpt.path.write_bytes(damage)
        with pytest.raises(InputError, match=f"{ckpt.path}: not a usable watch checkpoint"):
            ckpt.restore(_watcher(cfg))
    # a checkpoint of other logs, or of other windows, is not taken up either
    ckpt.path.write_bytes(good)
    other = Logs(tmp_path / "other")
    with pytest.raises(InputError, match="written for the logs"):
        ckpt.restore(_watcher(config_from_dict(_doc(other))))
    doc = _doc(logs)
    doc["ops"]["rollback"]["window_s"] = 30.0
    with pytest.raises(InputError, match="rollback.window_s is 30"):
        ckpt.restore(_watcher(config_from_dict(doc)))
    other.close()
    logs.close()


def _wait_checkpoint(path: Path, ends: tuple[list[int], list[int]], proc: Any) -> None:
    """Until the checkpoint says that the watcher read both logs to ``ends``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.returncode
        try:
            s = json.loads(path.read_bytes())["serving"]["scores"]
            if (s["event_offsets"], s["example_offsets"]) == (ends[0], ends[1]):
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {ends}")


def test_freshrec_watch_killed_and_stopped_resumes(tmp_path: Path) -> None:
    """A real ``freshrec watch``: killed with SIGKILL after stage 7 (mid-streak), the rest of
    the logs written, restarted, stopped with SIGTERM: the windows and the rollback it
    prints are those of the uninterrupted run; a damaged checkpoint stops it, naming it."""
    straight = _uninterrupted(tmp_path)
    logs = Logs(tmp_path / "logs")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_doc(logs, watch_checkpoint_s=0.2)))
    state = tmp_path / "state"
    args = [sys.executable, "-m", "freshrec.cli", "-v", "watch", "--config", str(cfg),
            "--state-dir", str(state), "--interval", "0.1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def start(name: str) -> subprocess.Popen[str]:
        with open(tmp_path / name, "w") as err:
            return subprocess.Popen(args, cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=err)

    for k in range(8):
        logs.stage(k)
    proc = start("first.log")
    try:
        _wait_checkpoint(state / "watch.json", logs.ends(), proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        for k in range(8, STAGES):
            logs.stage(k)
        proc = start("second.log")
        _wait_checkpoint(state / "watch.json", logs.ends(), proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = (tmp_path / "second.log").read_text()
    assert proc.returncode == 0, err
    # it went on from the checkpoint (seven windows closed before the kill), not from the
    # logs' start
    assert re.search(r"watch: resumed from .*watch\.json \(\d+ examples matched, \d+ "
                     r"impressions pending, 7 windows\)", err), err
    assert "reading the logs from the start" in (tmp_path / "first.log").read_text()
    assert json.loads(out)["serving"] == straight
    (state / "watch.json").write_bytes(b'{"v": 1, "alerts": ')
    bad = subprocess.run(args + ["--duration", "1"], cwd=ROOT, env=env, text=True,
                         capture_output=True, timeout=60)
    assert bad.returncode == 2 and f"{state / 'watch.json'}: not a usable" in bad.stderr
    logs.close()
