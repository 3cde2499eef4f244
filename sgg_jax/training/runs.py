"""A run directory and what it keeps: the config it was trained with, the dataset facts its
model needs, and which stages finished.

    <workdir>/config.json                    the full config (written when training starts)
    <workdir>/dataset/facts.json, statistics.*   vocabularies + training statistics
    <workdir>/checkpoints/<stage>/<step>/    Orbax checkpoints of each stage
    <workdir>/checkpoints/<stage>/finished.json  written once the stage's last step is saved
    <workdir>/.lock                          held while a process trains or evaluates the run

Evaluation, prediction and `sgg_jax.load` rebuild a run from these files alone
(`resolve_run_config`): the model and data fields come from the saved config, and a
command-line value that differs in such a field is refused. Everything here reads plain files
(no Orbax, no JAX backend), so it can run before `jax.distributed.initialize`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from sgg_jax.io_utils import write_json_atomic

CONFIG_FILE = "config.json"
FACTS_DIR = "dataset"
CHECKPOINTS = "checkpoints"
FINISHED_FILE = "finished.json"
LOCK_FILE = ".lock"

# Fields that may differ between training and evaluation / prediction: how and where a run is
# evaluated, not what was trained ("x.*" = the whole section).
EVAL_FIELDS = ("mode", "eval.*", "predict.*", "runtime.*", "distributed.*",
               "input.eval_batch_size", "input.worker_count", "train.compilation_cache_dir",
               "train.data_parallel", "data.data_dir", "data.image_dir", "data.cache_dir",
               "data.tfds_dir")


class RunConfigError(ValueError):
    """A run directory is missing what it needs, or a request contradicts how it was trained."""


class WorkdirBusyError(RunConfigError):
    """Another process is training or evaluating in the same run directory."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds <workdir>/.lock (an exclusive `flock`) while the block runs; a second process on
    the same workdir gets `WorkdirBusyError` naming the holder. The kernel drops the lock when
    its process ends however it ends (kill -9 included), so no stale lock is ever left; the
    file's contents (holder's pid, host, start time) only serve the message."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise WorkdirBusyError(f"workdir {workdir!r} is in use by another process "
                                   f"({holder}); wait for it to end or choose another "
                                   "--workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


class UnfinishedRunError(RunConfigError):
    """The run's stages have not all finished."""


def is_eval_field(key: str) -> bool:
    """Whether a dotted config key may differ from the run's saved value."""
    return any(key == f or (f.endswith(".*") and key.startswith(f[:-1])) for f in EVAL_FIELDS)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: leaf value} of a ConfigDict / mapping (tuples normalised to lists)."""
    out: dict[str, Any] = {}
    items = config.items() if hasattr(config, "items") else []
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (ml_collections.ConfigDict, Mapping)):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


# ----------------------------------------------------------------------------------------------
# Finding a run


def find_run(path: str) -> tuple[str, str]:
    """(workdir holding config.json, checkpoint root) for a workdir, its `checkpoints`
    directory or one stage's checkpoint directory; the root is the workdir or that stage dir."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: does not exist (expected a training workdir or "
                                "<workdir>/checkpoints/<stage>)")
    for root, ckpt in ((path, path), (os.path.dirname(path), os.path.dirname(path)),
                       (os.path.dirname(os.path.dirname(path)), path)):
        if os.path.isfile(os.path.join(root, CONFIG_FILE)):
            return root, ckpt
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE} in it or its run directory (runs "
                            "trained by `python -m sgg_jax.main` write it when training starts)")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved in `<workdir>/config.json`."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise RunConfigError(f"{path}: not valid JSON ({e}); expected the run's saved config") \
            from e
    if not isinstance(raw, dict) or "model" not in raw or "train" not in raw:
        raise RunConfigError(f"{path}: expected a saved sgg_jax config (with 'model' and "
                             "'train')")
    config = ml_collections.ConfigDict(raw)
    add_new_eval_fields(config)
    return config


def add_new_eval_fields(config: ml_collections.ConfigDict) -> list[str]:
    """Evaluation fields added to the library after a run was saved take their defaults, so
    that such a run can be evaluated with them (e.g. `eval.save_logits`); nothing the run
    trained with changes. Returns the fields added."""
    from sgg_jax.config import get_base_config

    if "eval" not in config:
        return []
    defaults = get_base_config().eval
    added = [k for k in defaults if k not in config.eval]
    for key in added:
        config.eval[key] = defaults[key]
    return [f"eval.{k}" for k in added]


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the run's full config as `<workdir>/config.json` (atomic)."""
    path = os.path.join(workdir, CONFIG_FILE)
    write_json_atomic(path, json.loads(config.to_json()))
    return path


def facts_dir(workdir: str) -> str:
    return os.path.join(workdir, FACTS_DIR)


def resolve_run_config(saved: ml_collections.ConfigDict, requested: Any = None,
                       explicit: Iterable[str] = (), source: str = "the run"
                       ) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The config to evaluate or predict a run with: the saved one, with the explicitly
    requested evaluation-only fields applied.

    requested: the command line's config (or None); explicit: the dotted keys the user set on
    the command line (`--config.x=...`). An explicit value of a training field (model, data,
    input, loss, train, ...) that differs from the saved one raises RunConfigError naming every
    such field; so does another `model.name` in the requested config. Returns (config, the
    non-explicit requested fields that differ from the run and are ignored).
    """
    run = flatten(saved)
    req = flatten(requested) if requested is not None else {}
    if requested is not None and req.get("model.name", run.get("model.name")) != run.get(
            "model.name"):
        raise RunConfigError(
            f"{source} trained model {run.get('model.name')!r}, the config asks for "
            f"{req.get('model.name')!r}: pass that run's own config (or none: --mode eval / "
            "predict read the run's config.json)")
    explicit = set(explicit)
    refused, apply, ignored = [], {}, []
    for key in sorted(explicit):
        if key not in req:
            continue
        if is_eval_field(key):
            apply[key] = req[key]
        elif key not in run or _differs(req[key], run[key]):
            refused.append(f"{key}={req[key]!r} (the run has "
                           f"{run[key]!r})" if key in run else f"{key} (not in the run's config)")
    if refused:
        raise RunConfigError(
            f"{source} was trained with other values of fields that define the model or its "
            f"data: {'; '.join(refused)}. Only evaluation fields may change when evaluating "
            f"or predicting ({', '.join(EVAL_FIELDS)})")
    for key, value in req.items():
        if key not in explicit and key in run and _differs(value, run[key]):
            ignored.append(key)
    config = ml_collections.ConfigDict(saved.to_dict())
    for key, value in apply.items():
        set_field(config, key, value)
    return config, ignored


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) != list(b)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return float(a) != float(b)
        except (TypeError, ValueError):
            return True
    return a != b


def set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Sets a dotted key; an unknown key is a RunConfigError naming it."""
    node = config
    parts = key.split(".")
    try:
        for p in parts[:-1]:
            node = node[p]
        if parts[-1] not in node:
            raise KeyError(parts[-1])
    except (KeyError, TypeError):
        raise RunConfigError(f"config field {key!r} does not exist") from None
    node[parts[-1]] = tuple(value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------------------------
# Checkpoints and finished stages (directory listings only)


def stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, CHECKPOINTS, stage)


def checkpoint_steps(directory: str) -> list[int]:
    """The committed checkpoint steps in a stage directory, ascending (Orbax writes a step
    under a temporary name and renames it when complete, so a plain number is whole)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def mark_finished(directory: str, stage: str, step: int, num_steps: int) -> None:
    """Records that a stage's final checkpoint (step == num_steps) is saved."""
    write_json_atomic(os.path.join(directory, FINISHED_FILE),
                      dict(stage=stage, step=int(step), num_steps=int(num_steps),
                           finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")))


def finished_step(directory: str) -> int | None:
    """The step a stage finished at, or None when it has not finished."""
    path = os.path.join(directory, FINISHED_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            step = int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunConfigError(f"{path}: unreadable stage marker ({e})") from e
    return step if step in checkpoint_steps(directory) else None


__all__ = ["EVAL_FIELDS", "RunConfigError", "UnfinishedRunError", "find_run",
           "load_run_config", "save_config", "resolve_run_config", "facts_dir", "stage_dir",
           "checkpoint_steps", "mark_finished", "finished_step", "is_eval_field", "flatten",
           "set_field"]
