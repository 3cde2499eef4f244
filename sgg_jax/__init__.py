"""sgg_jax: scene graph generation in JAX.

The Python API (sgg_jax/api.py; the CLI `python -m sgg_jax.main` is a layer over it):
`get_config("configs/imp.py:tiny")` builds a config, `train(config, workdir)` trains and
evaluates a run and returns its results, `evaluate_run(workdir)` evaluates a finished run
again, and `load(checkpoint)` returns a `Predictor` for one's own images
(sgg_jax/predict.py). Each imports what it needs on first use, so `import sgg_jax` stays
cheap (no JAX import).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import ml_collections

    from sgg_jax.predict import Predictor


def get_config(spec: str, overrides: Mapping[str, Any] | None = None
               ) -> "ml_collections.ConfigDict":
    """The config of `--config <file>[:preset]`, e.g. "configs/imp.py:tiny" or "imp:tiny",
    with dotted-key `overrides`; fields can then be set as attributes (see `sgg_jax.api`)."""
    from sgg_jax import api
    return api.get_config(spec, overrides)


def train(config: Any, workdir: str, explicit: Sequence[str] = ()) -> dict[str, Any]:
    """Trains and evaluates `config` (a ConfigDict or a "file.py[:preset]" string) in
    `workdir`, resuming a run there; returns the results dict it writes to results.json.
    A bad field raises ValueError naming it (`sgg_jax.api.train`)."""
    from sgg_jax import api
    return api.train(config, workdir, explicit)


def evaluate_run(run: str, config_overrides: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Evaluates a finished run (workdir or stage checkpoint directory) with its own config and
    evaluation-only `config_overrides` ({"eval.modes": "predcls"}); returns the results dict
    (`sgg_jax.api.evaluate_run`)."""
    from sgg_jax import api
    return api.evaluate_run(run, config_overrides, **kwargs)


def load(checkpoint: Any, config: Any = None, **kwargs: Any) -> "Predictor":
    """A `sgg_jax.predict.Predictor` from a training workdir or a stage's checkpoint directory
    (the run directory alone suffices): `load(dir).predict(image)` -> SceneGraph;
    `.predict_many(paths, output_dir)`. `config`: evaluation-only changes, e.g.
    {"predict.top_relations": 50} (see `sgg_jax.predict.load`)."""
    from sgg_jax import predict
    return predict.load(checkpoint, config, **kwargs)


__all__ = ["evaluate_run", "get_config", "load", "train"]
