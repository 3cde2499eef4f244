"""Helpers shared by the training tests (not a test module)."""
from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str = "imp", preset: str = "tiny", **overrides):
    """configs/<name>.py:<preset> with dotted-key overrides, as `sgg_jax.main` would build it."""
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset)
    for key, value in overrides.items():
        node = config
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return config


def flat_params(params) -> dict[str, np.ndarray]:
    """{'a/b/kernel': array} for comparing parameter trees."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(path): np.asarray(jax.device_get(v)) for path, v in leaves}


class RecordingWriter:
    """Stands in for the TensorBoard writer; keeps every logged scalar."""

    def __init__(self):
        self.rows = []

    def scalars(self, step, values, prefix=""):
        self.rows.append((step, prefix, dict(values)))

    def close(self):
        pass
