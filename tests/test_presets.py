"""The published-setup (`vg`) presets of Motifs and KERN: they validate, plan the published
phases, and their optimizers give each parameter group the published rate (one update from a
known gradient, checked against the closed form of SGD's / Adam's first step)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.config import epochs_to_steps
from sgg_jax.models import registry
from sgg_jax.training import experiment, optim
from test_model_contract import make_inputs, facts
from training_utils import load_config

GRAD = 1e-3  # every gradient entry: small enough that clipping at norm 5 never acts


def _zero_params(name: str):
    """The model's parameter tree (tiny sizes: the group paths do not depend on them), zeros."""
    model = registry.get_spec(name).build(
        load_config(name, "tiny").model,
        registry.BuildContext(mode="sgcls", facts=facts(), build_model=None))
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, False),
                            make_inputs())["params"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _group_of(path) -> str:
    keys = [str(getattr(k, "key", k)) for k in path]
    return "/".join(keys[:2]) if keys[0] == "relation_head" else keys[0]


def _one_leaf_per_group(params):
    """The tree cut to its first leaf of each group (the optimizers label by path, so one
    leaf tells a group's rate; a few leaves keep the eager update fast)."""
    out, seen = {}, set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if _group_of(path) in seen:
            continue
        seen.add(_group_of(path))
        node = out
        keys = [str(getattr(k, "key", k)) for k in path]
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = leaf
    return out


def _steps_by_group(config, stage_name, params):
    """{top-level group or 'relation_head/<sub>': the set of |update| values after one step}."""
    stage = config.train.stages[stage_name]
    for name, (_, groups) in optim.make_optimizers(stage, config.train, params).items():
        spec = optim.optimizer_specs(stage)[name]
        assert groups == optim.split_list(spec.trainable), (name, groups)  # all exist
    params = _one_leaf_per_group(params)
    opts = optim.make_optimizers(stage, config.train, params)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, GRAD, p.dtype), params)
    total = jax.tree.map(jnp.zeros_like, params)
    for tx, _ in opts.values():
        updates, _ = tx.update(grads, tx.init(params), params)
        total = jax.tree.map(jnp.add, total, updates)
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(total):
        out.setdefault(_group_of(path), set()).update(np.round(np.abs(np.asarray(leaf)).ravel(), 12))
    return out


def test_motifs_vg_is_neural_motifs_published_setup():
    config = load_config("motifs", "vg", **{"model.from_scratch": True})
    spec = experiment.validate(config, training=False)
    plan = [(p.name, p.mode) for p in experiment.plan_stages(config, spec)
            if p.kind == experiment.RELATION_KIND]
    assert plan == [("objects", "sgcls"), ("relations", "sgcls"), ("sgdet", "sgdet")]
    m = config.model
    assert (m.order, m.hidden_dim, m.embed_dim, m.pos_dim, m.obj_layers, m.edge_layers,
            m.freq_bias) == ("leftright", 512, 200, 128, 2, 4, True)
    assert (config.input.batch_size, config.sampling.num_rels, config.sampling.fg_fraction,
            config.input.max_objects) == (6, 256, 0.25, 64)
    rel, refine = config.train.stages.relations, config.train.stages.sgdet
    assert rel.num_steps == 25 * 9621  # 25 epochs of 57,723 images at batch 6
    assert refine.num_steps == 10 * 9621 and refine.learning_rate == 6e-4  # -lr 1e-4 x 6
    assert rel.schedule == refine.schedule == "plateau"
    p = config.train.plateau
    assert (p.every, p.split, p.metric, p.patience, p.factor, p.cooldown) == (
        9621, "val", "R@100", 3, 0.1, 1)
    assert p.stop_below == pytest.approx(1 / 99)
    # SGD's first step from zero momentum and zero weights: lr * g (decay adds wd * 0).
    steps = _steps_by_group(config, "relations", _zero_params("motifs"))
    assert steps["backbone"] == {0.0}
    np.testing.assert_allclose(sorted(steps["roi_features"]), [6e-4 * GRAD], rtol=1e-5)
    for group in ("obj_classifier", "relation_head/objects", "relation_head/edges"):
        np.testing.assert_allclose(sorted(steps[group]), [6e-3 * GRAD], rtol=1e-5)


def test_kern_vg_runs_kern_s_three_phases_with_its_adam():
    config = load_config("kern", "vg", **{"model.from_scratch": True})
    spec = experiment.validate(config, training=False)
    plan = [(p.name, p.mode) for p in experiment.plan_stages(config, spec)
            if p.kind == experiment.RELATION_KIND]
    assert plan == [("objects", "sgcls"), ("predcls", "predcls"), ("sgcls", "sgcls"),
                    ("sgdet", "sgdet")]
    assert config.train.stages.sgdet.learning_rate == 2e-5
    assert (config.model.hidden_dim, config.model.obj_steps, config.model.rel_steps) == (512, 3, 3)
    assert config.train.stages.predcls.num_steps == epochs_to_steps(25, 2) == 25 * 28862
    assert config.train.stages.sgcls.losses == "object,relation"
    params = _zero_params("kern")
    # Adam's first step is lr * g / (|g| + eps): with eps = 1e-3 = g, half the rate.
    phase1 = _steps_by_group(config, "predcls", params)
    np.testing.assert_allclose(sorted(phase1["relation_head/relations"]), [2e-5 / 2], rtol=1e-4)
    np.testing.assert_allclose(sorted(phase1["roi_features"]), [2e-6 / 2], rtol=1e-4)
    for frozen in ("backbone", "obj_classifier", "relation_head/objects"):
        assert phase1[frozen] == {0.0}, frozen
    phase2 = _steps_by_group(config, "sgcls", params)
    for group in ("obj_classifier", "relation_head/objects", "relation_head/relations"):
        np.testing.assert_allclose(sorted(phase2[group]), [2e-5 / 2], rtol=1e-4)


def test_plateau_follows_pytorch_reduce_on_plateau_by_hand():
    """optim.plateau_step against a hand-run of ReduceLROnPlateau("max", patience 3, factor
    0.1, threshold 1e-4 abs, cooldown 1), neural-motifs' settings, and the scale on the updates."""
    import ml_collections

    plateau = ml_collections.ConfigDict(dict(patience=3, factor=0.1, threshold=1e-4,
                                             cooldown=1))
    params = {"relation_head": {"w": jnp.zeros((2,))}}
    train = load_config("motifs", "vg").train
    spec = ml_collections.ConfigDict(dict(trainable="relation_head", losses="relation",
                                          learning_rate=0.5, warmup_steps=0, optimizer="sgd",
                                          schedule="plateau", num_steps=10))
    (tx, _), = optim.make_optimizers(spec, train, params).values()
    opt_state = tx.init(params)
    # metric: 1, 2, then flat; best 2 from the 2nd; bad counts 1, 2, 3, 4 > 3 -> x0.1 at the
    # 6th, the 7th falls in the cooldown (count reset), then 1..4 again -> x0.01 at the 11th.
    metrics = [1, 2, 2, 2, 2.00005, 2, 2, 2, 2, 2, 2]
    expect = [1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01]
    for m, want in zip(metrics, expect):
        opt_state, new = optim.plateau_step(opt_state, m, plateau)
        assert float(new.scale) == pytest.approx(want), (m, want)
    assert float(new.best) == 2.0
    grads = {"relation_head": {"w": jnp.full((2,), GRAD)}}
    updates, _ = tx.update(grads, opt_state, params)  # SGD's first step: -lr * g * scale
    np.testing.assert_allclose(np.asarray(updates["relation_head"]["w"]), -0.5 * GRAD * 0.01,
                               rtol=1e-5)


@pytest.mark.parametrize("value", [0.0, -1e-3])
def test_adam_eps_must_be_positive(value):
    config = load_config("kern", "tiny", **{"train.adam_eps": value})
    with pytest.raises(ValueError, match=r"config\.train\.adam_eps="):
        experiment.check_ranges(config)
