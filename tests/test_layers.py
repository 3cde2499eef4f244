"""Imports run one way: data_pipelines -> core (ops, kernels, evaluation, losses, documents) ->
models -> training -> entry points. Every module is parsed (function-local imports included)
and an import of a higher layer fails the test, naming the file, the line and both layers."""
from __future__ import annotations

import ast
import os

import pytest

from training_utils import REPO

# Layer of each package / module (the longest matching prefix wins).
LAYERS = {
    "data_pipelines": 0,
    "pallas_kernels": 1,
    "sgg_jax.ops": 1,
    "sgg_jax.evaluation": 1,
    "sgg_jax.losses": 1,
    "sgg_jax.relation_sampling": 1,
    "sgg_jax.io_utils": 1,
    "sgg_jax.config": 1,
    "sgg_jax.runtime": 1,
    "sgg_jax.weights": 1,
    "sgg_jax.images": 1,
    "sgg_jax.scene_graph": 1,
    "sgg_jax.visualize": 1,
    "sgg_jax.models": 2,
    "sgg_jax.training": 3,
    "sgg_jax.inference": 4,
    "sgg_jax.api": 4,
    "sgg_jax.predict": 4,
    "sgg_jax.evaluate": 4,
    "sgg_jax.main": 4,
    "sgg_jax.compare": 4,
    "sgg_jax.export": 4,
    "sgg_jax.__main__": 4,
    "sgg_jax": 4,  # the package face (sgg_jax.load, train, evaluate_run, get_config)
}
NAMES = {0: "data_pipelines", 1: "core", 2: "models", 3: "training", 4: "entry points"}


def layer(module: str) -> int | None:
    best = None
    for prefix, level in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, level)
    return None if best is None else best[1]


def modules() -> list[tuple[str, str]]:
    """(dotted name, path) of every library module."""
    out = []
    for top in ("sgg_jax", "data_pipelines", "pallas_kernels"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    out.append((rel.removesuffix(".__init__"), path))
    return sorted(out)


def imports(path: str, module: str) -> list[tuple[str, int]]:
    """(imported name, line) of every import in a file, relative ones resolved; `from a import
    b` gives "a.b" (a submodule, or a name whose layer is a's)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def test_every_module_has_a_layer():
    missing = [m for m, _ in modules() if layer(m) is None]
    assert not missing, missing


def test_no_module_imports_a_higher_layer():
    bad = []
    for module, path in modules():
        own = layer(module)
        for target, line in imports(path, module):
            other = layer(target)
            if other is not None and other > own:
                bad.append(f"{os.path.relpath(path, REPO)}:{line} ({NAMES[own]}) imports "
                           f"{target} ({NAMES[other]})")
    assert not bad, "\n".join(bad)


def test_the_check_catches_an_upward_import(tmp_path):
    """The parser sees function-local and relative imports (what hid the old circle)."""
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from sgg_jax.training import trainer\n"
                 "from ..training import steps\n")
    found = imports(str(f), "sgg_jax.models.mod")
    assert ("sgg_jax.training.trainer", 2) in found and ("sgg_jax.training.steps", 3) in found
    assert layer("sgg_jax.models.mod") < layer("sgg_jax.training.trainer")


@pytest.mark.parametrize("name", ["sgg_jax.models.msdn", "sgg_jax.training.trainer",
                                  "data_pipelines.pipeline", "sgg_jax.predict"])
def test_layers_of_known_modules(name):
    assert layer(name) == {"sgg_jax.models.msdn": 2, "sgg_jax.training.trainer": 3,
                           "data_pipelines.pipeline": 0, "sgg_jax.predict": 4}[name]
