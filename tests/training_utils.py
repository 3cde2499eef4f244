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


def run_stages(config, workdir, writer=None):
    """Every planned stage of `config` (as train_and_evaluate, without the final evaluation;
    the run files are saved as training saves them). Returns (experiment, final params)."""
    from sgg_jax.training import experiment, trainer

    exp = experiment.setup(config, workdir)
    experiment.save_run_files(exp)
    params = experiment.init_params(exp, jax.random.key(config.seed))
    params = trainer.train_stages(exp, params, jax.random.key(1), writer or RecordingWriter())
    return exp, params


def one_batch_forever(real_loader, transform=lambda batch: batch):
    """A stand-in for `data_lib.train_loader` that yields its first batch (transformed) forever."""
    import grain

    def loader(cfg, data, mesh, seed):
        batch = transform(next(iter(real_loader(cfg, data, mesh, seed))))
        return grain.MapDataset.source([batch]).repeat().to_iter_dataset()

    return loader


def make_facts(num_classes: int, num_predicates: int, fg_matrix=None, bg_matrix=None,
               num_words: int = 8, cooccurrence=None, class_images=None):
    """DatasetFacts for model tests: names, training counts (`fg_matrix` [C+1, C+1, P+1];
    zeros by default; `cooccurrence` [C+1, C+1] and `class_images` [C+1], by default a fixed
    pattern in which class C is in no image) and a caption vocabulary of `num_words` (>= 4
    incl. the specials)."""
    from data_pipelines.facts import DatasetFacts
    from data_pipelines.statistics import DatasetStatistics

    c, p = num_classes, num_predicates
    fg = np.zeros((c + 1, c + 1, p + 1), np.int64) if fg_matrix is None else np.asarray(fg_matrix)
    bg = np.zeros(fg.shape[:2], np.int64) if bg_matrix is None else np.asarray(bg_matrix)
    labels = ["__background__"] + [f"class{i}" for i in range(1, c + 1)]
    predicates = ["__background__"] + [f"predicate{i}" for i in range(1, p + 1)]
    if cooccurrence is None:  # a class pattern with an unseen class (C) and an unseen pair
        cooccurrence = np.add.outer(np.arange(c + 1), np.arange(c + 1)) % 3
        cooccurrence[c], cooccurrence[:, c] = 0, 0
    if class_images is None:
        class_images = np.where(np.arange(c + 1) == c, 0, 4)
    stats = DatasetStatistics(object_counts=np.zeros(c + 1, np.int64),
                              predicate_counts=fg.sum(axis=(0, 1)).astype(np.int64),
                              fg_matrix=fg, bg_matrix=bg, idx_to_label=labels,
                              idx_to_predicate=predicates, num_images=0,
                              cooccurrence=np.asarray(cooccurrence, np.int64),
                              class_images=np.asarray(class_images, np.int64))
    words = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(num_words - 4)]
    return DatasetFacts(idx_to_label=tuple(labels), idx_to_predicate=tuple(predicates),
                        idx_to_word=tuple(words), statistics=stats)


def random_variables(model, inputs, seed: int = 0, train: bool = False):
    """Variables with the shapes `model.init` gives (traced by eval_shape, so no init is
    compiled) filled on the host: kernels ~ N(0, 1/fan_in), scales 1, biases ~ N(0, 0.1)."""
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train), inputs)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if leaf.ndim >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


class Interrupt(Exception):
    """Raised by `interrupted_after` in place of a training step."""


def interrupted_after(monkeypatch, steps: int):
    """Makes the trainer's batch transfer raise `Interrupt` after `steps` batches (a run killed
    mid-stage); call the returned function to undo it."""
    from sgg_jax.training import mesh as mesh_lib

    real = mesh_lib.to_global
    calls = {"n": 0}

    def flaky(tree, mesh):
        calls["n"] += 1
        if calls["n"] > steps:
            raise Interrupt()
        return real(tree, mesh)

    monkeypatch.setattr(mesh_lib, "to_global", flaky)
    return lambda: monkeypatch.setattr(mesh_lib, "to_global", real)


def finished_run(config, workdir, stage="relations"):
    """A run directory whose `stage` holds the initial parameters as its finished checkpoint
    (no training step compiled): what restore_from reads. Returns its parameters."""
    import jax

    from sgg_jax.training import experiment, optim, runs
    from sgg_jax.training.checkpointing import StageCheckpointer
    from sgg_jax.training.steps import TrainState

    exp = experiment.setup(config, str(workdir))
    experiment.save_run_files(exp)
    params = experiment.init_params(exp, jax.random.key(3))
    stage_cfg = config.train.stages[stage]
    state = TrainState.create(params, optim.make_optimizers(stage_cfg, config.train, params))
    ckpt = StageCheckpointer(exp.checkpoint_dir(stage))
    ckpt.save(int(stage_cfg.num_steps), state, None, dict(stage=stage))
    ckpt.close()
    runs.mark_finished(exp.checkpoint_dir(stage), stage, int(stage_cfg.num_steps),
                       int(stage_cfg.num_steps))
    return params


TWO_OPTIMIZERS = {
    "train.stage_order": "relations", "train.data_parallel": 1,
    "train.stages.relations.update_rule": "alternating",
    "train.stages.relations.optimizers": {
        "heads": {"trainable": "relation_head", "losses": "relation"},
        "objects": {"trainable": "roi_features,obj_classifier", "losses": "object",
                    "learning_rate": 3e-3, "optimizer": "sgd"}}}


def two_optimizer_config(cache_dir):
    """The tiny IMP with one stage stepping two optimizers in turn (heads: Adam; object
    branch: SGD with momentum)."""
    config = load_config("imp", "tiny", **{"data.cache_dir": cache_dir})
    with config.unlocked():
        for key, value in TWO_OPTIMIZERS.items():
            node = config
            *path, last = key.split(".")
            for p in path:
                node = node[p]
            node[last] = value
    return config
