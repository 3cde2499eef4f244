"""KERN's parts (the contract test covers the whole model in every mode): the two priors by
hand, routing that follows the co-occurrence prior, and finite outputs for classes and pairs
never seen in training."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.models import ModelInputs, registry
from sgg_jax.models.kern import GGNNObjects
from sgg_jax.models.priors import ConstantTable, cooccurrence_prior, predicate_distribution
from training_utils import load_config, make_facts, random_variables


def test_the_priors_by_hand():
    co = np.array([[0, 0, 0], [0, 2, 3], [0, 1, 0]])
    np.testing.assert_allclose(cooccurrence_prior(co, np.array([0, 4, 0])),
                               [[0, 0, 0], [0, 0.5, 0.75], [0, 1, 0]])  # row / max(images, 1)
    fg = np.zeros((2, 2, 3))
    fg[1, 1] = [7, 1, 3]  # column 0 is replaced by the intersecting pairs + 1
    dist = predicate_distribution(fg, np.array([[0, 0], [0, 4]]))
    np.testing.assert_allclose(dist[1, 1], [5 / 9, 1 / 9, 3 / 9])
    np.testing.assert_allclose(dist[0, 1], [1, 0, 0])  # a pair never seen: background only


def _objects_out(prior, feats, mask):
    net = GGNNObjects(ConstantTable(prior), hidden=4, steps=2)
    params = net.init(jax.random.key(0), feats, mask)
    params = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.key(1), p.shape),
                          params)  # the readout starts at zero
    return lambda f, m: np.asarray(net.apply(params, f, m))


def test_objects_talk_only_along_the_cooccurrence_prior():
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(1, 3, 6)).astype(np.float32))
    mask = jnp.asarray([[True, True, True]])
    alone = jnp.asarray([[True, False, False]])
    silent = _objects_out(np.zeros((4, 4), np.float32), feats, mask)
    # no routing weight: object 0's logits are the same with or without the others
    np.testing.assert_allclose(silent(feats, mask)[0, 0], silent(feats, alone)[0, 0],
                               rtol=1e-5, atol=1e-6)
    routed = _objects_out(np.full((4, 4), 0.5, np.float32), feats, mask)
    assert not np.allclose(routed(feats, mask)[0, 0], routed(feats, alone)[0, 0], atol=1e-4)


def test_classes_and_pairs_never_seen_give_finite_outputs():
    """Class C is in no training image and no pair has a relation: every prior row is the
    degenerate one, and nothing becomes NaN in any mode."""
    c, p = 4, 3
    facts = make_facts(c, p, fg_matrix=np.zeros((c + 1, c + 1, p + 1)),
                       bg_matrix=np.zeros((c + 1, c + 1)))
    config = load_config("kern", "tiny").model
    rng = np.random.default_rng(0)
    boxes = np.concatenate([xy := rng.uniform(0, 30, (1, 3, 2)), xy + 10], -1)
    inputs = ModelInputs(images=jnp.zeros((1, 64, 64, 3), jnp.uint8),
                         image_sizes=jnp.full((1, 2), 64, jnp.int32),
                         boxes=jnp.asarray(boxes, jnp.float32),
                         box_mask=jnp.ones((1, 3), bool),
                         labels=jnp.asarray([[c, c, 1]], jnp.int32),
                         pairs=jnp.asarray([[[0, 1], [1, 2], [2, 0]]], jnp.int32),
                         pair_mask=jnp.ones((1, 3), bool))
    for mode in ("predcls", "sgcls", "sgdet"):
        model = registry.build_model(config, facts, mode)
        out = jax.jit(lambda v, x: model.apply(v, x, False))(random_variables(model, inputs),
                                                               inputs)
        assert np.all(np.isfinite(np.asarray(out.obj_logits))), mode
        assert np.all(np.isfinite(np.asarray(out.rel_logits))), mode
