"""Joiner workers: partitions divided among joiners write what one joiner writes; the
``--workers`` supervisor restarts a worker killed with SIGKILL and nothing changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig, write_to_log
from freshrec.errors import InputError
from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig
from freshrec.stream.workers import parse_partitions, split_partitions
from tests.stream.test_join import _read_examples

SIM = SimulatorConfig(seed=4, n_users=300, n_items=400, candidates=20, requests_per_s=20.0,
                      click_delay_median_s=8.0, bias=-2.0, duplicate_rate=0.03,
                      malformed_rate=0.01)
CFG = JoinerConfig(window_s=30, allowed_lateness_s=5, checkpoint_every_s=0.0)


def _log(path, partitions, n_requests):
    log = FileLog(path, FileLogConfig(partitions=partitions, fsync="never"))
    write_to_log(ClickStreamSimulator(SIM).records(n_requests=n_requests), log)
    return log


def _per_partition(log):
    return [_read_examples(_Only(log, p)) for p in range(log.partitions)]


class _Only:
    """A view of one partition of a log, as a one-partition log for ``_read_examples``."""

    def __init__(self, log, p):
        self.log, self.p, self.partitions = log, p, 1

    def read(self, partition, offset, max_records=1000, timeout_s=0.0):
        return self.log.read(self.p, offset, max_records, timeout_s)


def test_parse_and_split_partitions():
    assert parse_partitions("3,0-1", 4) == (0, 1, 3)
    assert split_partitions((0, 1, 2, 3), 3) == [(0, 1), (2,), (3,)]
    with pytest.raises(InputError, match="outside the source's partitions 0-3"):
        parse_partitions("2-4", 4)
    with pytest.raises(InputError, match="not an int or a range"):
        parse_partitions("x", 4)
    with pytest.raises(InputError, match="'3-1' is an empty range .* first: 1-3"):
        parse_partitions("3-1", 4)
    with pytest.raises(InputError, match="--workers must be in"):
        split_partitions((0, 1), 3)


def _one_joiner(src, tmp_path):
    """What one joiner over every partition writes (4 output partitions)."""
    one = FileLog(tmp_path / "one", FileLogConfig(partitions=4, fsync="never"))
    j = Joiner(src, one, tmp_path / "s-one", CFG)
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    return one


def test_workers_over_disjoint_partitions_write_what_one_joiner_writes(tmp_path):
    src = _log(tmp_path / "in", 4, 500)
    one = _one_joiner(src, tmp_path)
    many = FileLog(tmp_path / "many", FileLogConfig(partitions=4, fsync="never"))
    for parts in [(0, 3), (1,), (2,)]:  # any division, run one after the other
        w = Joiner(src, many, tmp_path / f"s-{parts}", CFG, partitions=parts)
        w.run(idle_timeout_s=0.0, flush_at_end=True)
        w.close()
    expected = _per_partition(one)
    assert sum(map(len, expected)) > 5000 and all(expected)
    assert _per_partition(many) == expected


def test_a_worker_needs_an_output_partition_per_source_partition(tmp_path):
    src = _log(tmp_path / "in", 2, 10)
    out = FileLog(tmp_path / "out")  # one partition
    with pytest.raises(InputError, match="the output log must have 2 partitions"):
        Joiner(src, out, tmp_path / "s", CFG, partitions=[1])
    full = FileLog(tmp_path / "out2", FileLogConfig(partitions=2))
    Joiner(src, full, tmp_path / "s2", CFG, partitions=[1]).close()
    with pytest.raises(InputError, match=r"belongs to source partitions \[1\], not \[0\]"):
        Joiner(src, full, tmp_path / "s2", CFG, partitions=[0])


def _children(parent: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent:
                kids.append(int(d.name))
    return kids


@pytest.mark.slow
def test_cli_workers_restart_a_killed_worker_and_lose_nothing(tmp_path):
    src = _log(tmp_path / "in", 4, 4000)
    one = _one_joiner(src, tmp_path)
    out = FileLog(tmp_path / "out", FileLogConfig(partitions=4, fsync="never"))
    exe = os.path.join(os.path.dirname(sys.executable), "freshrec")
    proc = subprocess.Popen(
        [exe, "join", "--workers", "2", "--source", f"file:{tmp_path / 'in'}",
         "--output", f"file:{tmp_path / 'out'}", "--state", str(tmp_path / "state"),
         "--window-s", "30", "--lateness-s", "5", "--idle-timeout-s", "1.0", "--flush"],
        stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while out.end_offset(0) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # kill worker 0-1 after its first commit
    victims = [k for k in _children(proc.pid)
               if "0-1" in Path(f"/proc/{k}/cmdline").read_text()]
    assert victims, "worker for partitions 0-1 not found"
    os.kill(victims[0], signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    m = json.loads(stdout.strip().splitlines()[-1])
    assert m["worker_restarts"] >= 1 and m["failed_workers"] == []
    assert _per_partition(FileLog(tmp_path / "out")) == _per_partition(one)

