"""The model registry: every relation model declares one `ModelSpec` in its own module.

The trainer, evaluator and predictor read a model only through its spec: how to build it from
its config and the dataset's facts, the parameter groups it owns (what stages may train or
freeze), the loss terms it adds, the extra networks and stage kinds it brings (MSDN's region
RPN), its hooks in SGDet and its extra evaluations. Nothing generic names a model.

Built-in models are imported lazily from `BUILTIN_MODULES`; a model of one's own is registered
by importing a module that calls `register(SPEC)` (`config.model.module` names that module, so
a saved run can find it again):

    SPEC = register(ModelSpec(name="toy", build=build_toy, param_groups=("backbone", ...)))

See docs/models.md, "Adding a model".
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

MODES = ("predcls", "sgcls", "sgdet")
# An evaluation mode of a run, not of a model: the detector's box AP alone.
DETECTION_MODE = "detection"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Parameter group of the Faster R-CNN of every run that evaluates SGDet (not a model's own).
DETECTOR_GROUP = "detector"
# Loss terms every relation model has (sgg_jax.losses.GENERIC_LOSSES): object classification
# on `obj_logits`, predicate classification on `rel_logits`.
GENERIC_LOSSES = ("object", "relation")

BUILTIN_MODULES = {
    "detector": "sgg_jax.models.detector",
    "freq": "sgg_jax.models.freq",
    "imp": "sgg_jax.models.imp",
    "kern": "sgg_jax.models.kern",
    "motifs": "sgg_jax.models.motifs",
    "msdn": "sgg_jax.models.msdn",
    "sgp": "sgg_jax.models.sgp",
}


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a model builder gets besides its config.

    mode: "predcls" | "sgcls" | "sgdet" (what the module computes; see ModelInputs.labels).
    facts: the dataset's `data_pipelines.facts.DatasetFacts` (class / predicate / word
      vocabularies, training statistics).
    build_model: builds another registered model from its own model config and a mode (for
      models on top of models, e.g. SGP around a base).
    """

    mode: str
    facts: Any
    build_model: Callable[[Any, str], nn.Module]

    @property
    def num_classes(self) -> int:
        return self.facts.num_classes

    @property
    def num_predicates(self) -> int:
        return self.facts.num_predicates


@dataclasses.dataclass(frozen=True)
class AuxiliaryNetwork:
    """A network a model brings besides its relation module, with its own top-level params
    group and its own stage kind (MSDN's region RPN: group "region_rpn", kind "regions"). It
    works on the run's detector, so its stage runs only in runs that evaluate SGDet.

    `exp` below is the run's Experiment (sgg_jax/training/experiment.py): its `config`,
    `detector()` module and `detector_state` are what these functions read.
    init(exp, rng, detector_params, images, image_sizes) -> the group's initial params.
    make_loss(exp) -> loss(params, batch, rng) -> (total, {metric: scalar}) for the stage's
      step; `params` is the run's whole tree (the function stops gradients where it reads
      frozen groups); the generic step differentiates it and applies the stage's optimizer.
    """

    group: str
    kind: str
    losses: tuple[str, ...]
    init: Callable[..., Any]
    make_loss: Callable[[Any], Callable]


@dataclasses.dataclass(frozen=True)
class SGDetHooks:
    """A model's part in the jitted SGDet step (sgg_jax/training/eval_loop.py).

    extra_inputs(params, images, image_sizes, scale) -> (ModelInputs fields, extra outputs): e.g.
      MSDN's caption-region proposals, from the detector's view of the images (its canvas;
      `scale` = model-canvas pixels per detector-canvas pixel, boxes returned in the model's
      canvas); the outputs dict is merged into the step's predictions.
    finish(out, outputs, image_sizes) -> out: may move the returned boxes (a box-refinement
      head, only when `config.eval.sgdet_refine_boxes`; the spec then says
      `sgdet_refines_boxes`) and add outputs (region captions).
    """

    extra_inputs: Callable | None = None
    finish: Callable | None = None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    name: `config.model.name`.
    build: (config.model, BuildContext) -> a Flax module called as
      `module.apply(variables, inputs: ModelInputs, train) -> ModelOutputs`.
    param_groups: the top-level submodule names of its params (stages train or freeze them).
    description: one line for the model table (docs/models.md, `--help` errors).
    requires: facts the builder reads ("fg_matrix", "cooccurrence", "vocabulary"), checked
      before anything compiles.
    losses: loss terms the model adds for relation stages, name -> function
      `(outputs, targets, config) -> {part name: scalar}` (sgg_jax/losses.py `LossTargets`),
      or None for a term the model returns itself in `ModelOutputs.losses`.
    config: model-specific `config.model` fields with their defaults (validated, documented).
    choices: those of them that take one of a few names, field -> the names (checked before
      any data is generated, naming the field).
    needs_training: False when PredCls / SGCls work from the initial parameters (FREQ).
    train_extras: optional (exp, stage name, loss names) -> (sampler or None, loss names to
      train): a relation stage's per-step extras, `sampler(params, batch, key)` returning an
      object with `.inputs` (ModelInputs fields to replace) that the loss terms read as
      `LossTargets.extras` (MSDN's sampled RoIs); a run that cannot provide them drops the
      losses that need them (with a warning).
    auxiliary: extra networks and their stage kinds (`AuxiliaryNetwork`).
    sgdet: optional (exp) -> `SGDetHooks`.
    sgdet_refines_boxes: the hooks honour `config.eval.sgdet_refine_boxes` (a box head).
    sgdet_reads_labels: the model's predicates in SGDet are looked up by the detector's labels
      (FREQ), so its objects must be reported with them (`eval.sgdet_object_source`).
    evaluations: extra evaluations the generic evaluator runs for this model, by name
      (sgg_jax/training/eval_loop.py `EXTRA_EVALUATIONS`: "captions" = region-caption BLEU);
      results.json stores each under its name.
    relations: False for the detector-only "model" (no relation stages, evaluated in
      `DETECTION_MODE` only).
    complete_config: optional (config) -> None, called on a training run's (unlocked) config
      before it is validated and saved: fills fields derived from others (SGP: the base
      model's section and the restore of its parameters from `model.base_run`), so that the
      saved config alone rebuilds the model.
    resolve: optional (config.model) -> ModelSpec, for a model whose auxiliary networks, SGDet
      hooks or extra evaluations depend on its config (SGP takes its base's): `spec_for`
      returns the resolved spec, so the trainer and evaluator see the parts of this config.
    """

    name: str
    build: Callable[[Any, BuildContext], nn.Module]
    param_groups: tuple[str, ...]
    description: str = ""
    requires: tuple[str, ...] = ()
    losses: Mapping[str, Callable | None] = dataclasses.field(default_factory=dict)
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    needs_training: bool = True
    train_extras: Callable[..., tuple[Callable | None, tuple[str, ...]]] | None = None
    auxiliary: tuple[AuxiliaryNetwork, ...] = ()
    sgdet: Callable[[Any], SGDetHooks] | None = None
    sgdet_refines_boxes: bool = False
    sgdet_reads_labels: bool = False
    evaluations: tuple[str, ...] = ()
    relations: bool = True
    complete_config: Callable[[Any], None] | None = None
    resolve: Callable[[Any], "ModelSpec"] | None = None

    @property
    def loss_names(self) -> tuple[str, ...]:
        """Every loss a relation stage of this model may name."""
        return GENERIC_LOSSES + tuple(n for n in self.losses if n not in GENERIC_LOSSES)


_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Adds a model to the registry (re-registering the same name replaces it); returns it."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register: expected a ModelSpec, got {type(spec).__name__}")
    clash = set(spec.param_groups) & ({DETECTOR_GROUP} | {a.group for a in spec.auxiliary})
    if clash:
        raise ValueError(f"model {spec.name!r}: parameter groups {sorted(clash)} are reserved "
                         "for the detector / its auxiliary networks")
    _SPECS[spec.name] = spec
    return spec


def import_model_module(module: str) -> None:
    """Imports a module that registers models: a dotted path or a .py file."""
    if not module:
        return
    if module.endswith(".py"):
        path = os.path.abspath(os.path.expanduser(module))
        if not os.path.isfile(path):
            raise ValueError(f"config.model.module={module!r}: no such file")
        name = "sgg_jax_user_model_" + os.path.splitext(os.path.basename(path))[0]
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"config.model.module={module!r}: cannot import it ({e})") from None


def model_names() -> tuple[str, ...]:
    """Registered and built-in model names, sorted."""
    return tuple(sorted(set(_SPECS) | set(BUILTIN_MODULES)))


def get_spec(name: str, module: str = "") -> ModelSpec:
    """The spec of model `name` (importing its module if needed); an unknown name is a
    ValueError listing the registered ones."""
    if name not in _SPECS:
        import_model_module(module)
    if name not in _SPECS and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _SPECS:
        hint = "" if module else " (a model of your own: set config.model.module to the module " \
            "that registers it)"
        raise ValueError(f"config.model.name={name!r}: unknown model; registered models: "
                         f"{', '.join(model_names())}{hint}")
    return _SPECS[name]


def spec_for(model_config: Any) -> ModelSpec:
    """The spec named by a `config.model` section (name + optional module), resolved for that
    section when the model's parts depend on it (`ModelSpec.resolve`)."""
    get = model_config.get if hasattr(model_config, "get") else (lambda k, d=None: d)
    spec = get_spec(str(get("name", "")), str(get("module", "") or ""))
    return spec.resolve(model_config) if spec.resolve is not None else spec


# ----------------------------------------------------------------------------------------------
# Fields every model config has, and the shared trunk arguments


COMMON_FIELDS = ("name", "backbone", "roi_size", "sampling_ratio", "fc_dim", "dtype", "dropout")


def field(model_config: Any, key: str) -> Any:
    """`model_config[key]`, or a ValueError naming the missing field."""
    try:
        return model_config[key]
    except (KeyError, AttributeError, TypeError):
        raise ValueError(f"config.model: missing field {key!r}") from None


def option(model_config: Any, key: str, spec: ModelSpec) -> Any:
    """A model-specific field: the config's value, else the spec's declared default."""
    get = model_config.get if hasattr(model_config, "get") else (lambda k, d=None: d)
    if key not in spec.config:
        raise KeyError(f"model {spec.name!r} reads config.model.{key}, which its spec does not "
                       "declare (ModelSpec.config)")
    value = get(key, None)
    return spec.config[key] if value is None else value


def dtype_of(model_config: Any):
    name = field(model_config, "dtype")
    if name not in DTYPES:
        raise ValueError(f"config.model.dtype: expected one of {tuple(DTYPES)}, got {name!r}")
    return DTYPES[name]


def trunk_kwargs(model_config: Any, mode: str) -> dict[str, Any]:
    """The arguments every built-in model's trunk (backbone + RoI features) takes."""
    from sgg_jax.models.backbone import BACKBONES

    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    backbone = field(model_config, "backbone")
    if backbone not in BACKBONES:
        raise ValueError(f"config.model.backbone: expected one of {BACKBONES}, got {backbone!r}")
    return dict(mode=mode, backbone_name=backbone, fc_dim=int(field(model_config, "fc_dim")),
                roi_size=int(field(model_config, "roi_size")),
                sampling_ratio=int(field(model_config, "sampling_ratio")),
                dropout=float(field(model_config, "dropout")), dtype=dtype_of(model_config))


def build_model(model_config: Any, facts: Any, mode: str = "predcls") -> nn.Module:
    """The relation module of `model_config` for a dataset's facts, in `mode`."""
    spec = spec_for(model_config)
    check_requirements(spec, facts)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    ctx = BuildContext(mode=mode, facts=facts,
                       build_model=lambda cfg, m: build_model(cfg, facts, m))
    return spec.build(model_config, ctx)


def check_requirements(spec: ModelSpec, facts: Any) -> None:
    """The facts a model declares it needs are there (before anything compiles)."""
    for need in spec.requires:
        if need == "fg_matrix":
            fg = getattr(getattr(facts, "statistics", None), "fg_matrix", None)
            if fg is None:
                raise ValueError(f"model {spec.name!r} needs the training statistics' "
                                 "fg_matrix [C+1, C+1, P+1]")
        elif need == "cooccurrence":
            if getattr(getattr(facts, "statistics", None), "cooccurrence", None) is None:
                raise ValueError(f"model {spec.name!r} needs the class co-occurrence prior "
                                 "(statistics format version 2: rebuild the dataset)")
        elif need == "vocabulary":
            if len(getattr(facts, "idx_to_word", ()) or ()) < 4:
                raise ValueError(f"model {spec.name!r} needs a caption vocabulary (>= 4 words "
                                 "incl. <pad>, <start>, <end>, <unk>)")
        else:
            raise ValueError(f"model {spec.name!r}: unknown requirement {need!r}")


__all__ = ["MODES", "DETECTION_MODE", "DTYPES", "DETECTOR_GROUP", "GENERIC_LOSSES", "BuildContext",
           "AuxiliaryNetwork", "SGDetHooks", "ModelSpec", "register", "get_spec", "spec_for", "model_names",
           "build_model", "trunk_kwargs", "field", "option", "import_model_module"]
