"""`python -m sgg_jax.main` with a fault injected: the process kills itself with SIGKILL (as
kill -9: no handler, no cleanup) at a chosen moment. Used by tests/test_preemption.py.

    python tests/kill_run.py MOMENT N -- <sgg_jax.main arguments>

MOMENT: `step` (while fetching the N-th training batch), `save` (right after the N-th
checkpoint save was started: Orbax is still writing it in the background) or `results` (the
N-th write of results.json, after its temporary file is written and before it is renamed).
"""
from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    moment, n = sys.argv[1], int(sys.argv[2])
    sys.argv = ["sgg_jax.main", *sys.argv[sys.argv.index("--") + 1:]]  # before main's flags
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if moment == "step":
        from sgg_jax.training import mesh as mesh_lib
        real_fetch = mesh_lib.to_global

        def fetch(tree, mesh):
            if hit():
                die()
            return real_fetch(tree, mesh)

        mesh_lib.to_global = fetch
    elif moment == "save":
        from sgg_jax.training.checkpointing import StageCheckpointer
        real_save = StageCheckpointer.save

        def save(self, *args, **kwargs):
            real_save(self, *args, **kwargs)
            if hit():
                die()

        StageCheckpointer.save = save
    elif moment == "results":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith("results.json") and hit():
                die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    else:
        raise SystemExit(f"unknown moment {moment!r}")
    from sgg_jax import main as entry

    entry.run()


if __name__ == "__main__":
    main()
