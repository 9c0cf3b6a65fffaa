"""The demo's child processes."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from freshrec.demo.processes import ChildProcess, DemoError, stop_all, wait_for


def test_a_child_does_not_import_from_the_current_directory(tmp_path, monkeypatch):
    # folders named like the package and a dependency, in the directory the demo runs from
    for name in ("freshrec", "yaml"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('shadowed')\n")
    monkeypatch.chdir(tmp_path)
    child = ChildProcess("version", ["--version"], tmp_path / "version.log")
    child.start()
    assert child.wait(120.0)
    assert child.proc.returncode == 0, child.tail()
    assert child.tail().startswith("freshrec ")


def test_a_dead_child_is_reported_with_its_output(tmp_path):
    child = ChildProcess("bad", ["no-such-command"], tmp_path / "bad.log")
    child.start()
    with pytest.raises(DemoError, match=r"bad exited with code 2; the end of its output"):
        wait_for("something", lambda: False, [child], timeout_s=120.0)


@pytest.mark.skipif(sys.platform != "linux", reason="process groups: Linux")
def test_stop_all_leaves_nothing_of_a_child_behind(tmp_path):
    child = ChildProcess("join", ["join", "--source", f"file:{tmp_path / 'in'}", "--output",
                                  f"file:{tmp_path / 'out'}", "--state", str(tmp_path / "s"),
                                  "--idle-timeout-s", "inf", "--no-progress"],
                         tmp_path / "join.log")
    child.start()
    wait_for("the joiner's state", lambda: (tmp_path / "s").exists(), [child], 120.0)
    stop_all([child], grace_s=10.0)
    # interrupted (SIGINT as KeyboardInterrupt: exit code 130), or killed after the grace
    # time when the interrupt came while numba was compiling (it swallows the exception)
    assert child.proc.returncode in (130, -signal.SIGKILL), child.tail()
    with pytest.raises(ProcessLookupError):
        os.killpg(child.proc.pid, 0)
