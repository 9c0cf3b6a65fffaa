"""The heap setting of long-running stream processes: freed memory is reused, not re-faulted."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, sys
import numpy as np
from freshrec._heap import retain_freed_heap
from freshrec.stream.job import tune_memory
mode = sys.argv[1]
applied = retain_freed_heap() if mode == "retain" else None
if mode.startswith("tune_memory"):  # as freshrec join runs, its join.retain_heap on or off
    tune_memory(retain_heap=mode.endswith("on"))
faults = []
for _ in range(4):  # allocate, touch and free 64 MiB, as a joiner does with each batch
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(8 << 20)
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


#: the fewest page faults 64 MiB can take (2 MiB pages)
_HUGE_PAGES = (64 << 20) // (2 << 20)
_GLIBC_ONLY = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@_GLIBC_ONLY
def test_retained_heap_reuses_freed_pages_instead_of_faulting_them_in_again():
    default = _faults("default")["faults"]
    assert min(default[1:]) >= _HUGE_PAGES  # each 64 MiB block is a fresh mmap
    retained = _faults("retain")
    assert retained["applied"] is True
    assert retained["faults"][0] >= _HUGE_PAGES  # the heap grows once ...
    assert max(retained["faults"][1:]) * 10 <= min(default[1:])  # ... and is reused after


@_GLIBC_ONLY
def test_the_join_sections_retain_heap_switch_turns_the_heap_setting_on_and_off():
    off = _faults("tune_memory_off")["faults"]
    on = _faults("tune_memory_on")["faults"]
    assert min(off[1:]) >= _HUGE_PAGES
    assert max(on[1:]) * 10 <= min(off[1:])


def test_retain_heap_must_be_a_bool():
    from freshrec.errors import ConfigError
    from freshrec.stream.config import JoinJobConfig

    with pytest.raises(ConfigError, match="retain_heap"):
        JoinJobConfig(retain_heap="yes")  # type: ignore[arg-type]


def test_tune_memory_sets_the_joiners_collector_thresholds_and_freezes():
    probe = ("import gc, json; from freshrec.stream.job import tune_memory, "
             "JOINER_GC_THRESHOLDS; tune_memory(); "
             "print(json.dumps([list(gc.get_threshold()), list(JOINER_GC_THRESHOLDS), "
             "gc.get_freeze_count() > 0]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    got, want, frozen = json.loads(out.stdout)
    assert got == want and frozen
