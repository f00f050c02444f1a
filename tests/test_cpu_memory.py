"""rankops.keep_freed_memory: after it, a large tensor allocated, written and freed again and
again faults its pages in once or twice, not every time (in a fresh process: the setting is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys, torch
import rankops
if sys.argv[1] == "keep":
    assert rankops.keep_freed_memory() and rankops.keep_freed_memory()  # (twice: idempotent)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = torch.empty(64 << 18)  # 64 MiB of fp32, touched, freed
t.fill_(1.0)
del t
before = faults()
for _ in range(5):
    t = torch.empty(64 << 18)
    t.fill_(1.0)
    del t
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused():
    pages = (64 << 20) // 4096
    runs = {}
    for mode in ("default", "keep"):
        r = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        runs[mode] = int(r.stdout.strip().splitlines()[-1])
    assert runs["default"] > 4 * pages  # glibc maps a 64 MiB block afresh each time: its pages fault again
    assert runs["keep"] < 2.5 * pages, runs  # reused: one or two blocks fault in over the five rounds, not five
