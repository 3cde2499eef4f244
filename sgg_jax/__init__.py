"""sgg_jax: scene graph generation in JAX.

`sgg_jax.load(checkpoint)` returns a `Predictor` for one's own images (see sgg_jax/predict.py);
it is imported on first use, so `import sgg_jax` stays cheap (no JAX import).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sgg_jax.predict import Predictor


def load(checkpoint: Any, config: Any = None, **kwargs: Any) -> "Predictor":
    """A `sgg_jax.predict.Predictor` from a training workdir or a stage's checkpoint directory
    (the run directory alone suffices): `load(dir).predict(image)` -> SceneGraph;
    `.predict_many(paths, output_dir)`. `config`: evaluation-only changes, e.g.
    {"predict.top_relations": 50} (see `sgg_jax.predict.load`)."""
    from sgg_jax import predict
    return predict.load(checkpoint, config, **kwargs)
