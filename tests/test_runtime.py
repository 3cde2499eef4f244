"""sgg_jax.runtime: the tuned host allocator keeps freed memory for reuse.

Property measured in a fresh interpreter (the setting is process-wide): a 128 MB block that is
written, freed and allocated again page-faults afresh under glibc's defaults (it is mmapped and
unmapped each time) and not once tuned (it comes back from the untrimmed heap).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sgg_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(runtime._glibc() is None, reason="glibc only")

_PROBE = r"""
import ctypes, json, resource, sys
from sgg_jax import runtime
applied = runtime.tune_host_allocator() if sys.argv[1] == "tuned" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 128 << 20  # plain malloc + memset: numpy would madvise huge pages and blur the count

def touch_block():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    return p

libc.free(touch_block())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = touch_block()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(p)
print(json.dumps({"applied": applied, "faults": faults, "pages": n // resource.getpagesize()}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_block_is_reused_without_page_faults_once_tuned():
    default, tuned = _probe("default"), _probe("tuned")
    assert tuned["applied"] is True
    # Default glibc: the second block is a fresh mapping, every page faults again.
    assert default["faults"] >= 0.9 * default["pages"], default
    # Tuned: the block is the heap memory the first one left behind.
    assert tuned["faults"] <= 0.02 * tuned["pages"], tuned


@pytest.mark.parametrize("enabled", [True, False])
def test_entry_point_applies_it_unless_the_config_says_no(tmp_path, enabled):
    # Predicting from a workdir with no checkpoint fails fast, after the allocator step.
    cmd = [sys.executable, "-m", "sgg_jax.main", "--config", "configs/freq.py", "--mode",
           "predict", "--checkpoint", str(tmp_path / "missing"), "--images", str(tmp_path),
           "--output", str(tmp_path / "out"), f"--config.runtime.tune_host_allocator={enabled}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert ("host allocator: freed memory kept for reuse" in out.stderr) == enabled, out.stderr
