"""Orbax checkpoints for one training stage: train state + grain iterator state + metadata.

Each stage owns a directory (`<workdir>/checkpoints/<stage>`). Orbax writes each step into a
temporary directory and renames it when complete, so a crash never leaves a half checkpoint that
looks valid. Saving the grain iterator with the state makes a resumed run see exactly the batches
an uninterrupted run would.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from sgg_jax.training import runs


log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A saved checkpoint cannot be restored into this run's state, or one cannot be saved."""


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


class StageCheckpointer:
    """Saves and restores one stage's checkpoints."""

    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._pending: int | None = None  # the step of the save that may still be in flight
        self._failed = False
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True),
            item_names=("state", "data", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any | None, meta: dict) -> None:
        """Starts saving `step` (Orbax finishes it in the background). A failure of this save
        or of the one before it (disk full, no permission) raises `CheckpointError` saying
        which step is intact; the failed step never becomes a checkpoint (it stays under its
        temporary name, which restore ignores)."""
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._guard(lambda: self.manager.save(step, args=ocp.args.Composite(**items),
                                              force=True), step)
        self._pending = step

    def _guard(self, write: Any, step: int | None = None) -> None:
        """Runs `write`; any failure becomes one `CheckpointError` naming the step that could
        not be saved and the newest committed step, which is left as it was."""
        try:
            write()
        except Exception as e:  # noqa: BLE001 - Orbax / tensorstore / the OS raise many kinds
            self._failed = True
            # the save in flight before this call, or this one: the first not committed failed
            committed = runs.checkpoint_steps(self.directory)
            failed = min((s for s in (self._pending, step) if s is not None
                          and s not in committed), default=step)
            intact = [s for s in committed if failed is None or s < failed]
            raise CheckpointError(
                f"{self.directory}: saving the checkpoint of step {failed} failed "
                f"({type(e).__name__}: {_reason(e)}). "
                + (f"The checkpoint of step {intact[-1]} is intact: once the cause is fixed "
                   "(disk space, permissions), the same command resumes from it"
                   if intact else "No earlier checkpoint of this stage is saved: the same "
                   "command trains the stage from its start once the cause is fixed")) from None

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None):
        """Restores the state into `abstract_state`'s shapes and shardings (and the iterator
        in place). Returns (state, meta)."""
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out.state, out.meta

    def restore_latest(self, abstract_state: Any, data_iterator: Any | None = None,
                       fallback: bool = False) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint, restored (and the iterator in place); None
        when there is none. One that fails to restore raises `CheckpointError` naming it and
        the earlier steps; with `fallback` it is moved aside (renamed, never deleted) and the
        next older one is tried."""
        while (step := self.manager.latest_step()) is not None:
            try:
                return step, self.restore(step, abstract_state, data_iterator)[0]
            except Exception as e:  # noqa: BLE001 - Orbax / tensorstore raise many kinds
                reason = _reason(e)
                earlier = [s for s in self.manager.all_steps() if s < step]
                path = os.path.join(self.directory, str(step))
                if not fallback:
                    raise CheckpointError(
                        f"checkpoint {path} cannot be restored ({type(e).__name__}: {reason}): "
                        "damaged, or written by another model or config. "
                        + (f"Earlier steps {earlier} are saved: --config.train.restore_fallback"
                           "=True moves this one aside and resumes from the newest that "
                           "restores" if earlier else "No earlier step is saved")
                        + f"; or move {self.directory} away to train the stage afresh"
                        ) from None
                aside = f"{path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
                try:
                    os.replace(path, aside)
                except FileNotFoundError:
                    pass  # another process of this run moved it already
                log.warning("checkpoint %s cannot be restored (%s); moved to %s, trying the "
                            "step before", path, reason, aside)
                self.manager.reload()
        return None

    def restore_params(self, step: int, abstract_params: Any, frozen: Any = None) -> Any:
        """Only the parameters named by `abstract_params` (shapes / shardings), whatever the
        optimizer that wrote the checkpoint; checkpoint groups absent from it are skipped, so an
        evaluation without SGDet restores a full run's checkpoint without its detector.

        With `frozen` (the non-trainable collections, {"model": ..., "detector": ...}, as
        initialised) returns (params, frozen): the saved collections where the checkpoint has
        them, else `frozen` as given (checkpoints written before they were saved)."""
        path = os.path.join(self.directory, str(step), "state")
        item = {"params": abstract_params}
        if frozen:
            item["frozen"] = abstract_like(frozen)
        args = ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)
        hint = "the checkpoint's parameters do not match this config's model (another model " \
            "or sizes?)"
        try:
            restored = ocp.PyTreeCheckpointer().restore(path, args=args)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: {hint}: {e}") from e
        params = restored["params"]
        # partial_restore hands targets the checkpoint lacks back unrestored.
        unrestored = lambda tree: [
            jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(
                tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
            if isinstance(v, jax.ShapeDtypeStruct)]
        missing = unrestored(params)
        if missing:
            raise ValueError(f"{path}: {hint}; not in the checkpoint: {', '.join(missing[:8])}"
                             + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
        if frozen is None:
            return params
        if not frozen:
            return params, frozen
        saved = restored.get("frozen")
        return params, (frozen if saved is None or unrestored(saved) else saved)

    def restore_raw_params(self, step: int) -> Any:
        """The saved parameters as NumPy arrays, whatever model wrote them (no target tree: for
        loading another run's groups into this one's, which checks shapes itself)."""
        path = os.path.join(self.directory, str(step), "state")
        try:
            state = ocp.PyTreeCheckpointer().restore(path)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise ValueError(f"{path}: not a readable training-state checkpoint ({e})") from e
        if not isinstance(state, dict) or "params" not in state:
            raise ValueError(f"{path}: holds no parameters (expected a stage checkpoint)")
        return state["params"]

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def wait(self) -> None:
        """Waits for the save in flight; raises `CheckpointError` if it failed."""
        self._guard(self.manager.wait_until_finished)
        self._pending = None

    def close(self) -> None:
        """Finishes the save in flight and releases Orbax's threads. After a failure already
        raised, closing does not raise it again."""
        if self._failed:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - the failure was reported by save / wait
                pass
            return
        self.wait()
        self.manager.close()



def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) for a concrete tree: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
