"""The Python API: build a config, train a run, evaluate a finished run.

    import sgg_jax
    config = sgg_jax.get_config("configs/imp.py:tiny")   # or "imp:tiny", a built-in config
    config.train.data_parallel = 1                         # fields are attributes
    results = sgg_jax.train(config, "runs/imp-tiny")       # == runs/imp-tiny/results.json
    again = sgg_jax.evaluate_run("runs/imp-tiny", {"eval.modes": "predcls"})

`python -m sgg_jax.main` is a thin layer over these functions (flags -> config -> the same
calls), so both apply the same validation (`experiment.validate`: ranges, choices, stages); the
API raises it as a `ValueError` naming the field where the command line prints it and exits 2.
Everything heavy (JAX) is imported inside the functions, so `import sgg_jax` stays cheap.
"""
from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from sgg_jax.io_utils import json_safe

# The source checkout's root (configs/ lives there next to sgg_jax/ in an editable install).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(path: str) -> str:
    """The config file `path` names: as given (relative to the current directory), else
    relative to the source checkout, else a built-in config's name ("imp" ->
    <checkout>/configs/imp.py). FileNotFoundError naming what was looked for otherwise."""
    candidates = [path, os.path.join(REPO_ROOT, path)]
    if os.sep not in path and not path.endswith(".py"):
        candidates.append(os.path.join(REPO_ROOT, "configs", f"{path}.py"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(f"config {path!r}: no such config file (looked in "
                            f"{os.getcwd()} and {REPO_ROOT})")


def get_config(spec: str, overrides: Mapping[str, Any] | None = None
               ) -> ml_collections.ConfigDict:
    """The config a `--config <file>[:preset]` would give, e.g. "configs/imp.py:tiny" (or
    "imp:tiny"), with `overrides` ({"model.hidden_dim": 64}, dotted keys) applied. The config
    is locked as on the command line: setting a field it does not have raises."""
    path, _, preset = spec.partition(":")
    file = config_path(path)
    module_spec = importlib.util.spec_from_file_location(
        f"sgg_jax_config_{os.path.splitext(os.path.basename(file))[0]}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(preset) if preset else module.get_config()
    for key, value in (overrides or {}).items():
        set_field(config, key, value)
    return config


def set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Sets a dotted key; an unknown key or a value of another type is a ValueError naming it."""
    from sgg_jax.training import runs

    try:
        runs.set_field(config, key, value)
    except TypeError as e:
        raise ValueError(f"config.{key}={value!r}: {e}") from None


def _as_config(config: ml_collections.ConfigDict | str) -> ml_collections.ConfigDict:
    """A ConfigDict from a ConfigDict (copied, so the caller's stays as it was) or a spec."""
    if isinstance(config, str):
        return get_config(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"config: expected an ml_collections.ConfigDict or a 'file.py[:preset]' "
                        f"string, got {type(config).__name__}")
    return copy.deepcopy(config)


def train(config: ml_collections.ConfigDict | str, workdir: str,
          explicit: Sequence[str] = ()) -> dict[str, Any]:
    """Trains every stage of `config` in `workdir` (resuming where a previous run there
    stopped), evaluates, writes results.json and returns what it holds (an undefined metric,
    such as the recall of an empty few-shot bucket, is None there).

    `explicit`: dotted keys the caller chose on purpose; with a reused detector
    (`model.detector.checkpoint`) its architecture replaces every other detector field.
    Raises ValueError (naming the field) for a config the CLI would refuse."""
    from sgg_jax.training import trainer

    config = _as_config(config)
    with config.unlocked():
        config.mode = "train"
    return json_safe(trainer.train_and_evaluate(config, os.fspath(workdir), list(explicit)))


def evaluate_run(run: str, config_overrides: Mapping[str, Any] | ml_collections.ConfigDict |
                 None = None, *, workdir: str | None = None,
                 explicit: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluates a finished run (a training workdir or a stage's checkpoint directory) with the
    config it was trained with (its config.json) and returns the results dict (as
    results.json holds it: an undefined metric is None).

    `config_overrides`: evaluation fields to change, as dotted keys ({"eval.modes": "predcls"})
    or a ConfigDict of which `explicit` names the keys that count (default: all); a model or
    data field that differs from the run's raises ValueError naming it. results.json (and the
    pictures) go to `workdir`, default the run's own directory."""
    from sgg_jax import inference
    from sgg_jax.training import runs, trainer

    run_dir, checkpoint = runs.find_run(os.fspath(run))
    config = inference.run_config(run_dir, config_overrides, explicit)
    out = os.path.abspath(os.fspath(workdir)) if workdir else run_dir
    # "" = the output workdir's own checkpoints: only when that is the run's directory
    return json_safe(trainer.evaluate_run(config, out, "" if checkpoint == out else checkpoint))


__all__ = ["evaluate_run", "get_config", "train", "config_path"]
