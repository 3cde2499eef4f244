"""Neural Motifs' parts (the contract test covers the whole model in every mode): the reading
orders by hand, LSTMs that never read padded steps, a decoder that feeds back its own
predictions, and the errors for a bad order."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.models import ModelInputs, registry
from sgg_jax.models.motifs import BiLSTMStack, MotifsContext, reading_order, sort_keys
from training_utils import load_config, make_facts

BOXES = np.array([[[20, 0, 40, 10],     # centre x 30, area 200
                   [0, 0, 20, 30],      # centre x 10, area 600
                   [10, 10, 30, 20],    # centre x 20, area 200 (ties box 0 on size)
                   [0, 0, 64, 64]]],    # padding
                 np.float32)
MASK = np.array([[True, True, True, False]])
PROBS = np.array([[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.0, 0.1, 0.9], [0.2, 0.4, 0.4]]],
                 np.float32)


@pytest.mark.parametrize("order,want", [("leftright", [1, 2, 0, 3]),
                                        ("confidence", [2, 0, 1, 3]),   # 0.9, 0.6, 0.3
                                        ("size", [1, 0, 2, 3])])        # 600, then the ties
def test_reading_orders_by_hand(order, want):
    got = reading_order(sort_keys(jnp.asarray(BOXES), jnp.asarray(PROBS), order),
                        jnp.asarray(MASK))
    assert np.asarray(got)[0].tolist() == want


def test_the_random_order_depends_on_the_boxes_only():
    keys = np.asarray(sort_keys(jnp.asarray(BOXES), jnp.asarray(PROBS), "random"))[0]
    perm = [2, 0, 1, 3]
    moved = np.asarray(sort_keys(jnp.asarray(BOXES[:, perm]), jnp.asarray(PROBS[:, perm]),
                                 "random"))[0]
    np.testing.assert_array_equal(moved, keys[perm])
    assert len(set(keys[:3].tolist())) == 3 and np.all((keys >= 0) & (keys < 1))


def test_the_lstms_read_only_each_sequence_s_real_steps():
    """Both directions over [B, T] with lengths: the real steps' outputs equal the same LSTMs
    run on the real steps alone, and garbage in the padding changes nothing."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5)).astype(np.float32)
    lengths = np.array([4, 2], np.int32)
    net = BiLSTMStack(hidden=3, num_layers=2)
    params = net.init(jax.random.key(0), x, lengths)
    apply = jax.jit(net.apply)
    out = np.asarray(apply(params, x, lengths))
    garbage = x.copy()
    for b, n in enumerate(lengths):
        garbage[b, n:] = rng.normal(size=garbage[b, n:].shape) * 100
        alone = np.asarray(apply(params, x[b:b + 1, :n], lengths[b:b + 1]))
        np.testing.assert_allclose(out[b, :n], alone[0], rtol=1e-5, atol=1e-6)
    again = np.asarray(apply(params, garbage, lengths))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(again[b, :n], out[b, :n], rtol=1e-6, atol=1e-6)


def _inputs(labels):
    rng = np.random.default_rng(1)
    b, o = 2, 5
    xy = rng.uniform(0, 40, (b, o, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (b, o, 2))], -1).astype(np.float32)
    mask = np.arange(o)[None] < np.array([[5], [3]])
    return ModelInputs(images=jnp.zeros((b, 64, 64, 3), jnp.uint8),
                       image_sizes=jnp.full((b, 2), 64, jnp.int32), boxes=jnp.asarray(boxes),
                       box_mask=jnp.asarray(mask), labels=jnp.asarray(labels),
                       pairs=jnp.zeros((b, 1, 2), jnp.int32),
                       pair_mask=jnp.zeros((b, 1), bool))


def test_the_decoder_feeds_back_its_own_predictions():
    """Decoding greedily (SGCls at test time) = teacher forcing with the labels it decoded."""
    c = 6
    rng = np.random.default_rng(2)
    feats = jnp.asarray(rng.normal(size=(2, 5, 8)).astype(np.float32))
    unary = jnp.asarray(rng.normal(size=(2, 5, c + 1)).astype(np.float32))
    ctx = MotifsContext(num_classes=c, mode="sgcls", order="leftright", hidden_dim=8,
                        embed_dim=4, pos_dim=4, num_layers=1)
    blank = _inputs(np.zeros((2, 5), np.int32))
    params = ctx.init(jax.random.key(0), feats, unary, blank, False)
    # the decoder's classifier starts at zero: give it weights so its feedback matters
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape),
                          params)
    apply = jax.jit(ctx.apply, static_argnums=4)  # one compilation per mode, not eager scans
    logits, labels = apply(params, feats, unary, blank, False)[:2]
    forced, forced_labels = apply(params, feats, unary, _inputs(np.asarray(labels)), True)[:2]
    np.testing.assert_allclose(np.asarray(forced), np.asarray(logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(forced_labels), np.asarray(labels))
    other = np.where(np.asarray(blank.box_mask), (np.asarray(labels) % c) + 1, 0)
    changed = apply(params, feats, unary, _inputs(other), True)[0]
    assert not np.allclose(np.asarray(changed), np.asarray(logits))  # the feedback is read


def test_an_unknown_order_names_the_field():
    config = load_config("motifs", "tiny").model
    with config.unlocked():
        config.order = "diagonal"
    facts = make_facts(4, 3, fg_matrix=np.ones((5, 5, 4)), bg_matrix=np.ones((5, 5)))
    with pytest.raises(ValueError, match="config.model.order: expected one of"):
        registry.build_model(config, facts, "sgcls")
