"""`python -m sgg_jax.main` with a fault injected: the process kills itself with SIGKILL (as
kill -9: no handler, no cleanup) at a chosen moment, or a checkpoint write fails as on a full
disk. Used by tests/test_preemption.py.

    python tests/kill_run.py MOMENT N -- <sgg_jax.main arguments>

MOMENT: `step` (while fetching the N-th training batch), `save` (right after the N-th
checkpoint save was started: Orbax is still writing it in the background) or `results` (the
N-th write of results.json, after its temporary file is written and before it is renamed),
`output` (the same for the N-th file `--mode predict` writes, a <stem>.json or <stem>.png), or
`full` (the N-th checkpoint save fails with ENOSPC in Orbax's background writer, after its
arrays are written: a partial temporary directory is left, as a full disk leaves it).
"""
from __future__ import annotations

import errno
import os
import signal
import sys


def fail_writes_of_save(n: int, code: int, patch=setattr) -> None:
    """Every file write of the N-th checkpoint save (counted over the process) fails with
    OSError `code`, in Orbax's background threads as a full disk or a lost permission would.
    Arrays go through tensorstore (not patched), so the failure comes after they are written.
    `patch(owner, name, value)`: setattr, or pytest's monkeypatch.setattr to undo it."""
    from etils import epath

    from sgg_jax.training.checkpointing import StageCheckpointer
    path_type = type(epath.Path("/"))
    real_write, real_save = path_type.write_text, StageCheckpointer.save
    state = {"saves": 0, "failing": ""}

    def save(self, step, *args, **kwargs):
        state["saves"] += 1
        if state["saves"] == n:
            state["failing"] = os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp")
        return real_save(self, step, *args, **kwargs)

    def write_text(self, *args, **kwargs):
        if state["failing"] and str(self).startswith(state["failing"]):
            raise OSError(code, os.strerror(code), str(self))
        return real_write(self, *args, **kwargs)

    patch(StageCheckpointer, "save", save)
    patch(path_type, "write_text", write_text)


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
    elif moment in ("results", "output"):
        real_replace = os.replace

        def chosen(dst: str) -> bool:
            if moment == "results":
                return dst.endswith("results.json")
            return dst.endswith((".json", ".png"))

        def replace(src, dst, *args, **kwargs):
            if chosen(str(dst)) and hit():
                die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif moment == "full":
        fail_writes_of_save(n, errno.ENOSPC)
    else:
        raise SystemExit(f"unknown moment {moment!r}")
    from sgg_jax import main as entry

    entry.run()


if __name__ == "__main__":
    main()
