"""Relation models, the detector and the model registry.

    spec = get_spec("imp")                                  # the registered ModelSpec
    model = build_model(config.model, facts, mode="sgcls")  # a Flax module
    outputs = model.apply(variables, inputs, train=False)   # ModelInputs -> ModelOutputs

Each model lives in its own module (`freq.py`, `imp.py`, `msdn.py`) and declares its spec there
(`registry.py`); docs/models.md lists them and explains how to add one.
"""
from sgg_jax.models.detection.build import build_detector, detector_config
from sgg_jax.models.interface import ModelInputs, ModelOutputs
from sgg_jax.models.registry import (DETECTOR_GROUP, MODES, BuildContext, ModelSpec,
                                     build_model, get_spec, model_names, register, spec_for)

__all__ = ["build_model", "build_detector", "detector_config", "get_spec", "spec_for",
           "model_names", "register", "BuildContext", "ModelSpec", "DETECTOR_GROUP", "MODES",
           "ModelInputs", "ModelOutputs"]
