"""Tests of MSDN (sgg_jax/models/msdn.py), the caption loss and the caption evaluation."""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from data_pipelines.batch import Batch
from sgg_jax import losses
from sgg_jax.evaluation import captions as captions_lib
from sgg_jax.losses import LossTargets
from sgg_jax.models import build_model, captioning, msdn
from sgg_jax.models.interface import ModelInputs, ModelOutputs
from sgg_jax.training import steps
from training_utils import load_config, make_facts, random_variables
from test_detector import np_iou  # the NumPy IoU reference the detector tests use

C, P, V = 4, 3, 12  # object classes, predicates, caption words (incl. 4 specials)
B, S, O, M, Q, L = 2, 64, 5, 8, 4, 6
N_BOXES, N_PAIRS, N_REGIONS = (5, 3), (8, 4), (4, 2)


def model_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        name="msdn", backbone="small_resnet", hidden_dim=16, num_iterations=2, roi_size=7,
        sampling_ratio=2, fc_dim=16, dtype="float32", dropout=0.0, gate_width=8))
    cfg.update(overrides)
    return cfg


def make_model(mode="sgcls"):
    return build_model(model_config(), make_facts(C, P, num_words=V), mode)


def init(model, inputs, seed=0):
    """Random variables filled on the host (`training_utils.random_variables`)."""
    return random_variables(model, inputs, seed)


def random_boxes(rng, shape, lo=8.0, hi=24.0):
    xy = rng.uniform(0, 36, shape + (2,))
    wh = rng.uniform(lo, hi, shape + (2,))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def make_inputs(seed: int = 0) -> ModelInputs:
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, (B, O))
    box_mask = np.arange(O)[None] < np.array(N_BOXES)[:, None]
    labels = np.where(box_mask, rng.integers(1, C + 1, (B, O)), 0).astype(np.int32)
    pairs = np.zeros((B, M, 2), np.int32)
    pair_mask = np.arange(M)[None] < np.array(N_PAIRS)[:, None]
    regions = np.zeros((B, Q, 4), np.float32)
    tokens = np.zeros((B, Q, L), np.int32)
    region_mask = np.arange(Q)[None] < np.array(N_REGIONS)[:, None]
    for b in range(B):
        cand = [(i, j) for i in range(N_BOXES[b]) for j in range(N_BOXES[b]) if i != j]
        pairs[b, :N_PAIRS[b]] = np.array(cand)[rng.choice(len(cand), N_PAIRS[b], replace=False)]
        for q in range(N_REGIONS[b]):
            # Regions: union boxes of real pairs, enlarged (so that some phrases link to them).
            s, o = pairs[b, q]
            u = np.concatenate([np.minimum(boxes[b, s, :2], boxes[b, o, :2]),
                                np.maximum(boxes[b, s, 2:], boxes[b, o, 2:])])
            regions[b, q] = u + np.array([-2, -2, 2, 2], np.float32) * q
            n = rng.integers(1, L - 1)
            tokens[b, q, :n + 2] = [captioning.START] + list(rng.integers(4, V, n)) + [captioning.END]
    return ModelInputs(
        images=jnp.asarray(rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)),
        image_sizes=jnp.full((B, 2), S, jnp.int32), boxes=jnp.asarray(boxes),
        box_mask=jnp.asarray(box_mask), labels=jnp.asarray(labels), pairs=jnp.asarray(pairs),
        pair_mask=jnp.asarray(pair_mask), region_boxes=jnp.asarray(regions),
        region_tokens=jnp.asarray(tokens), region_mask=jnp.asarray(region_mask))


@pytest.fixture(scope="module")
def setup():
    model = make_model()
    inputs = make_inputs()
    params = init(model, inputs)
    apply = jax.jit(lambda p, x: model.apply(p, x, train=False))
    return model, inputs, params, apply


# ------------------------------------------------------------------------------------------------
# The dynamic graph


def covered_fraction_numpy(region, phrase):
    """Independent reference: loops, intersection area / phrase area."""
    iw = max(0.0, min(region[2], phrase[2]) - max(region[0], phrase[0]))
    ih = max(0.0, min(region[3], phrase[3]) - max(region[1], phrase[1]))
    area = (phrase[2] - phrase[0]) * (phrase[3] - phrase[1])
    return iw * ih / area if area > 0 else 0.0


def test_phrase_region_links_hand_boxes_and_numpy_reference():
    phrases = np.array([[[0, 0, 10, 10],     # inside region 0 entirely
                         [0, 0, 10, 10],     # (padded phrase: never linked)
                         [5, 0, 15, 10],     # region 0 covers 50%
                         [1, 0, 11, 10],     # region 0 covers 90%; region 1 covers 80% exactly
                         [20, 20, 30, 30]]], np.float32)
    pair_mask = np.array([[True, False, True, True, True]])
    regions = np.array([[[0, 0, 10, 10], [-5, 0, 9, 10], [0, 0, 40, 40]]], np.float32)
    region_mask = np.array([[True, True, False]])
    links = np.asarray(msdn.phrase_region_links(jnp.asarray(phrases), jnp.asarray(pair_mask),
                                                jnp.asarray(regions), jnp.asarray(region_mask)))
    expected = np.array([[[True, True, False],   # region 1 covers 90% of phrase 0
                          [False, False, False],
                          [False, False, False],
                          [True, False, False],  # 0.8 is not > 0.8
                          [False, False, False]]])
    np.testing.assert_array_equal(links, expected)

    rng = np.random.default_rng(3)
    ph = random_boxes(rng, (2, 30), 2, 30)
    rg = random_boxes(rng, (2, 7), 10, 60)
    cover = np.asarray(msdn.covered_fraction(jnp.asarray(rg), jnp.asarray(ph)))
    ref = np.array([[[covered_fraction_numpy(rg[b, q], ph[b, m]) for q in range(7)]
                     for m in range(30)] for b in range(2)])
    np.testing.assert_allclose(cover, ref, rtol=1e-5, atol=1e-6)
    pm, rm = rng.random((2, 30)) < 0.8, rng.random((2, 7)) < 0.8
    links = np.asarray(msdn.phrase_region_links(jnp.asarray(ph), jnp.asarray(pm),
                                                jnp.asarray(rg), jnp.asarray(rm)))
    np.testing.assert_array_equal(links, (ref > 0.8) & pm[:, :, None] & rm[:, None, :])
    assert links.any() and not links.all()


# ------------------------------------------------------------------------------------------------
# The model


def test_shapes_masks_and_parameter_groups(setup):
    model, inputs, params, apply = setup
    assert set(params["params"]) == {"backbone", "roi_features", "relation_head",
                                     "obj_classifier", "captioner"}
    out = apply(params, inputs)
    assert out.obj_logits.shape == (B, O, C + 1)
    assert out.rel_logits.shape == (B, M, P + 1)
    assert out.aux["region_scores"].shape == (B, Q)
    assert out.aux["caption_logits"].shape == (B, Q, L, V)
    caps = np.asarray(out.aux["captions"])
    assert caps.shape == (B, Q, L) and caps.dtype == np.int32
    region_mask = np.asarray(inputs.region_mask)
    assert (caps[~region_mask] == captioning.PAD).all()
    assert (caps[region_mask][:, 0] == captioning.START).all()
    for name in ("obj_logits", "rel_logits"):
        assert np.isfinite(np.asarray(getattr(out, name))).all()
    # Training mode has no greedy captions (only teacher-forced logits).
    train_out = jax.eval_shape(lambda: model.apply(params, inputs, train=True))
    assert "captions" not in train_out.aux and "caption_logits" in train_out.aux
    with pytest.raises(ValueError, match="region_boxes"):
        jax.eval_shape(lambda: model.apply(params, inputs.replace(region_boxes=None)))


def test_build_model_needs_the_vocabulary():
    facts = make_facts(C, P)
    facts = dataclasses.replace(facts, idx_to_word=facts.idx_to_word[:3])
    with pytest.raises(ValueError, match="caption vocabulary"):
        build_model(model_config(), facts, "sgcls")


def test_permutation_equivariance_over_objects(setup):
    """Permuting the real boxes and remapping the pairs permutes obj_logits and leaves
    rel_logits, region scores and captions unchanged."""
    _, inputs, params, apply = setup
    perms = [np.r_[np.random.default_rng(b).permutation(n), np.arange(n, O)]
             for b, n in enumerate(N_BOXES)]
    perm = np.stack(perms)  # new position k holds old box perm[k]
    inv = np.argsort(perm, axis=1)
    take = lambda x: jnp.asarray(np.take_along_axis(np.asarray(x), perm.reshape(
        perm.shape + (1,) * (np.asarray(x).ndim - 2)), axis=1))
    pairs = np.asarray(inputs.pairs)
    new_pairs = np.stack([np.take_along_axis(inv, pairs[..., k], axis=1) for k in (0, 1)], -1)
    permuted = inputs.replace(boxes=take(inputs.boxes), box_mask=take(inputs.box_mask),
                              labels=take(inputs.labels), pairs=jnp.asarray(new_pairs))
    a, b = apply(params, inputs), apply(params, permuted)
    np.testing.assert_allclose(np.asarray(b.obj_logits), np.asarray(take(a.obj_logits)),
                               rtol=1e-4, atol=1e-4)
    pm = np.asarray(inputs.pair_mask)
    np.testing.assert_allclose(np.asarray(b.rel_logits)[pm], np.asarray(a.rel_logits)[pm],
                               rtol=1e-4, atol=1e-4)
    rm = np.asarray(inputs.region_mask)
    np.testing.assert_allclose(np.asarray(b.aux["region_scores"])[rm],
                               np.asarray(a.aux["region_scores"])[rm], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(b.aux["captions"]), np.asarray(a.aux["captions"]))


def test_padding_changes_nothing_real(setup):
    """Garbage in the padded boxes, pairs, regions and tokens leaves every real output as is."""
    _, inputs, params, apply = setup
    rng = np.random.default_rng(7)
    bm, pm, rm = (np.asarray(inputs.box_mask), np.asarray(inputs.pair_mask),
                  np.asarray(inputs.region_mask))
    boxes = np.where(bm[..., None], np.asarray(inputs.boxes), random_boxes(rng, (B, O)))
    # Padded pairs point at real boxes (their messages must still be dropped).
    pairs = np.where(pm[..., None], np.asarray(inputs.pairs), rng.integers(0, 3, (B, M, 2)))
    regions = np.where(rm[..., None], np.asarray(inputs.region_boxes),
                       np.array([0, 0, 64, 64], np.float32))  # would cover every phrase
    tokens = np.where(rm[..., None], np.asarray(inputs.region_tokens),
                      rng.integers(0, V, (B, Q, L)))
    noisy = inputs.replace(boxes=jnp.asarray(boxes), pairs=jnp.asarray(pairs.astype(np.int32)),
                           region_boxes=jnp.asarray(regions),
                           region_tokens=jnp.asarray(tokens.astype(np.int32)))
    a, b = apply(params, inputs), apply(params, noisy)
    np.testing.assert_allclose(np.asarray(b.obj_logits)[bm], np.asarray(a.obj_logits)[bm],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(b.rel_logits)[pm], np.asarray(a.rel_logits)[pm],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(b.aux["caption_logits"])[rm],
                               np.asarray(a.aux["caption_logits"])[rm], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(b.aux["captions"]), np.asarray(a.aux["captions"]))


def test_regions_send_messages(setup):
    """The region branch is wired in: moving a linked region changes the predicate logits."""
    _, inputs, params, apply = setup
    moved = inputs.replace(region_boxes=inputs.region_boxes + jnp.array([1.0, 0.0, 9.0, 3.0]))
    a, b = apply(params, inputs), apply(params, moved)
    pm = np.asarray(inputs.pair_mask)
    assert not np.allclose(np.asarray(a.rel_logits)[pm], np.asarray(b.rel_logits)[pm])


# ------------------------------------------------------------------------------------------------
# Captioner


def _random_captioner(vocab: int, length: int, seed: int, std: float):
    """A tiny captioner, region features [2, 3, 5] and N(0, std) weights (seeded)."""
    cap = captioning.RegionCaptioner(vocab_size=vocab, hidden_dim=8)
    feats = jnp.asarray(np.random.default_rng(seed).normal(size=(2, 3, 5)), jnp.float32)
    shapes = jax.eval_shape(lambda f: cap.init(jax.random.PRNGKey(0), f,
                                               jnp.zeros((2, 3, length), jnp.int32)), feats)
    rng = np.random.default_rng(seed + 1)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), shapes)
    return cap, feats, variables


@pytest.fixture(scope="module")
def captioner():
    cap, feats, variables = _random_captioner(V, L, seed=0, std=0.5)
    greedy = jax.jit(lambda v, f: cap.apply(v, f, L, method=cap.greedy))
    teacher = jax.jit(lambda v, f, t: cap.apply(v, f, t, method=cap.teacher_logits))
    return variables, feats, greedy, teacher


def _set_end_bias(variables, value):
    params = jax.tree.map(lambda x: x, variables)
    bias = params["params"]["decoder"]["word_logits"]["bias"]
    params["params"]["decoder"]["word_logits"]["bias"] = bias.at[captioning.END].set(value)
    return params


def test_greedy_decoding_stops_and_pads(captioner):
    variables, feats, greedy, teacher = captioner
    ended = np.asarray(greedy(_set_end_bias(variables, 1e4), feats))
    np.testing.assert_array_equal(ended[..., :2], np.broadcast_to([captioning.START, captioning.END], (2, 3, 2)))
    assert (ended[..., 2:] == captioning.PAD).all()

    never = np.asarray(greedy(_set_end_bias(variables, -1e4), feats))
    assert (never[..., 0] == captioning.START).all() and (never[..., 1:] >= 3).all()

    # Middle ground: some captions end early. After <end> only padding; before it only words;
    # and every word is the argmax (over non-special-start tokens) of the teacher-forced logits
    # of the decoded prefix, i.e. the scan feeds back its own predictions.
    for bias in (0.0, 2.0, 4.0):
        v = _set_end_bias(variables, bias)
        caps = np.asarray(greedy(v, feats))
        logits = np.array(teacher(v, feats, jnp.asarray(caps)))
        logits[..., [captioning.PAD, captioning.START]] = -np.inf
        for row, lg in zip(caps.reshape(-1, L), logits.reshape(-1, L, V)):
            end = np.flatnonzero(row == captioning.END)
            stop = end[0] if end.size else L - 1
            assert row[0] == captioning.START
            assert (row[1:stop] >= 3).all()
            assert (row[stop + 1:] == captioning.PAD).all()
            np.testing.assert_array_equal(lg[1:stop + 1].argmax(-1), row[1:stop + 1])


def _caption_log_probs(teacher, variables, feats, caps):
    """Total log-probability of each caption [.., L] under teacher forcing (words and <end>
    scored, PAD / <start> excluded from the softmax as in decoding), NumPy."""
    logits = np.array(teacher(variables, feats, jnp.asarray(caps)), np.float64)
    logits[..., [captioning.PAD, captioning.START]] = -np.inf
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, caps[..., None], axis=-1)[..., 0]
    scored = np.zeros(caps.shape, bool)
    for idx in np.ndindex(caps.shape[:-1]):
        end = np.flatnonzero(caps[idx] == captioning.END)
        scored[idx][1:(end[0] if end.size else caps.shape[-1] - 1) + 1] = True
    return np.where(scored, picked, 0.0).sum(-1)


def test_beam_search_is_exact_when_wide_and_greedy_when_one():
    """Beam width 1 is greedy; a beam wide enough to keep every hypothesis returns the most
    probable caption of all (enumerated here, scored by teacher forcing)."""
    v, length = 6, 5  # specials + 2 words; 4 decoded positions -> 4^4 word/<end> sequences
    # Large weights, no word bias: varied captions whose scores depend on the LSTM states.
    cap, feats, variables = _random_captioner(v, length, seed=2, std=2.0)
    variables["params"]["decoder"]["word_logits"]["bias"] = jnp.zeros(v)
    decode = jax.jit(lambda vv, f, k: cap.apply(vv, f, length, k, method=cap.decode),
                     static_argnums=2)
    greedy = jax.jit(lambda vv, f: cap.apply(vv, f, length, method=cap.greedy))
    teacher = jax.jit(lambda vv, f, t: cap.apply(vv, f, t, method=cap.teacher_logits))

    # All captions: <start>, then words (3, 4, 5 = <unk> and 2 words) until <end>, then PAD.
    seqs = set()
    for body in itertools.product([captioning.END, 3, 4, 5], repeat=length - 1):
        end = body.index(captioning.END) if captioning.END in body else length - 1
        seqs.add((captioning.START,) + body[:end + 1] + (captioning.PAD,) * (length - end - 2))
    seqs = np.asarray(sorted(seqs), np.int32)
    every = np.broadcast_to(seqs[:, None, None], (len(seqs), 2, 3, length))
    above_greedy = 0
    # <end> bias 0: short captions tend to win; -2: longer ones, whose scores depend on
    # carrying each hypothesis' LSTM state through the beam's reordering.
    for end_bias in (0.0, -2.0):
        v = _set_end_bias(variables, end_bias)
        np.testing.assert_array_equal(np.asarray(decode(v, feats, 1)),
                                      np.asarray(greedy(v, feats)))
        scores = np.stack([_caption_log_probs(teacher, v, feats, c) for c in every])
        best = every[scores.argmax(0), np.arange(2)[:, None], np.arange(3)[None]]
        wide = np.asarray(decode(v, feats, len(seqs)))
        np.testing.assert_array_equal(wide, best)
        wide_lp = _caption_log_probs(teacher, v, feats, wide)
        greedy_lp = _caption_log_probs(teacher, v, feats, np.asarray(decode(v, feats, 1)))
        assert (wide_lp >= greedy_lp - 1e-6).all()
        above_greedy += int((wide_lp > greedy_lp + 1e-6).sum())
    assert above_greedy > 0  # the exhaustive optimum is not just greedy's caption again


# ------------------------------------------------------------------------------------------------
# Losses and training


def test_caption_loss_hand_case():
    tokens = jnp.array([[[1, 5, 2, 0], [1, 6, 7, 2]]], jnp.int32)  # [1, 2, 4]
    region_mask = jnp.array([[True, False]])
    logits = np.zeros((1, 2, 4, 8), np.float32)
    logits[0, 0, 1, 5] = math.log(3.0)  # p(5) = 3 / (3 + 7) at position 1
    logits[0, 0, 0] = 100.0 * np.arange(8)  # position 0 (<start>) is not scored
    logits[0, 1] = np.random.default_rng(0).normal(0, 50, (4, 8))  # padded region: ignored
    loss = losses.caption_loss(jnp.asarray(logits), tokens, region_mask)
    expected = (-math.log(3 / 10) + math.log(8)) / 2  # tokens 5 and <end>
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        losses.caption_loss(jnp.asarray(logits[:, :, :3]), tokens, region_mask)


def test_box_head_losses_hand_case():
    """Region objectness + box and class-specific box refinement losses, hand-computed
    (smooth-L1 with beta 1/9: 0.5 x^2 / beta below beta, |x| - beta / 2 above)."""
    beta = 1.0 / 9.0
    sl1 = lambda x: 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta
    bce = lambda z, y: math.log1p(math.exp(-z)) if y else math.log1p(math.exp(z))
    scores = jnp.array([[2.0, -1.0, 0.5, 9.0]])
    fg = jnp.array([[True, False, False, False]])
    valid = jnp.array([[True, True, True, False]])  # the 4th RoI is padding
    deltas = jnp.zeros((1, 4, 4)).at[0, 0].set(jnp.array([0.05, 0.0, 1.0, 0.0]))
    targets = jnp.zeros((1, 4, 4)).at[0, 0].set(jnp.array([0.0, 0.0, 0.0, -0.5]))
    targets_ = LossTargets(batch=None, inputs=ModelInputs(
        images=None, image_sizes=None, boxes=None, box_mask=None, labels=None, pairs=None,
        pair_mask=None, region_mask=valid), pair_labels=None, pair_mask=None,
        extras=types.SimpleNamespace(region_fg=fg, region_deltas=targets))
    outputs = ModelOutputs(obj_logits=None, rel_logits=None,
                           aux=dict(region_scores=scores, region_deltas=deltas))
    parts = msdn.region_term(outputs, targets_, None)
    objectness, box = parts["region_objectness_loss"], parts["region_box_loss"]
    np.testing.assert_allclose(float(objectness), (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 0)) / 3,
                               rtol=1e-6)
    np.testing.assert_allclose(float(box), (sl1(0.05) + sl1(1.0) + sl1(0.5)) / 3, rtol=1e-6)

    per_class = np.zeros((1, 3, C + 1, 4), np.float32)
    per_class[0, 0, 2] = [0.3, 0.0, 0.0, 0.0]      # RoI 0, class 2 (its label)
    per_class[0, 0, 1] = [9.0, 9.0, 9.0, 9.0]      # another class: not read
    per_class[0, 1, 4] = [0.0, 0.02, 0.0, 0.0]     # RoI 1, class 4
    per_class[0, 2, :] = 50.0                      # RoI 2 has no target (label 0)
    labels = jnp.array([[2, 4, 0]])
    tgt = np.zeros((1, 3, 4), np.float32)
    tgt[0, 1, 3] = -2.0
    got = msdn.box_refinement_loss(jnp.asarray(per_class), labels, jnp.asarray(tgt))
    np.testing.assert_allclose(float(got), (sl1(0.3) + sl1(0.02) + sl1(2.0)) / 2, rtol=1e-6)
    assert float(msdn.box_refinement_loss(jnp.asarray(per_class), labels * 0,
                                          jnp.asarray(tgt))) == 0.0


def test_box_head_reads_the_object_branch_only(setup):
    """Proposal boxes go through the same object branch as the objects: proposals equal to the
    object boxes get the objects' deltas, and they change no other output (no graph part)."""
    model, inputs, params, apply = setup
    base = apply(params, inputs)
    with_props = apply(params, inputs.replace(proposal_boxes=inputs.boxes[:, ::-1]))
    real = np.asarray(inputs.box_mask)[:, ::-1]  # padded objects' features are zeroed
    np.testing.assert_allclose(np.asarray(with_props.aux["proposal_box_deltas"])[real],
                               np.asarray(base.aux["obj_box_deltas"])[:, ::-1][real],
                               rtol=1e-5, atol=1e-5)
    assert base.aux["obj_box_deltas"].shape == (B, O, C + 1, 4)
    assert base.aux["region_deltas"].shape == (B, Q, 4)
    for name in ("obj_logits", "rel_logits"):
        np.testing.assert_array_equal(getattr(with_props, name), getattr(base, name))
    np.testing.assert_array_equal(with_props.aux["region_deltas"], base.aux["region_deltas"])


def make_batch(inputs: ModelInputs) -> Batch:
    rels = np.zeros((B, 4, 3), np.int32)
    rel_mask = np.zeros((B, 4), bool)
    for b in range(B):
        rels[b, :2] = np.c_[np.asarray(inputs.pairs)[b, :2], [1 + b, 3 - b]]
        rel_mask[b, :2] = True
    return Batch(images=inputs.images, image_sizes=inputs.image_sizes,
                 scales=jnp.ones((B,)), image_ids=jnp.arange(B, dtype=jnp.int32),
                 boxes=inputs.boxes, labels=inputs.labels, box_mask=inputs.box_mask,
                 relations=jnp.asarray(rels), rel_mask=jnp.asarray(rel_mask),
                 region_boxes=inputs.region_boxes, region_tokens=inputs.region_tokens,
                 region_mask=inputs.region_mask)


def test_train_steps_reduce_the_loss(setup):
    model, inputs, params, _ = setup
    batch = make_batch(inputs)
    # Frozen trunk: no backward through the backbone and RoI-align (compile time).
    optimizers = {"main": (optax.adam(3e-3), ["relation_head", "obj_classifier", "captioner"])}
    config = load_config("msdn", "tiny", **{"loss.edge": "dnorm", "sampling.num_rels": 8,
                                            "sampling.fg_fraction": 0.5})
    step = jax.jit(steps.make_relation_step(
        model, optimizers, {"main": ("object", "relation", "caption")}, config=config,
        model_losses=msdn.SPEC.losses, relation_params=lambda p: p))
    state = steps.TrainState.create(params["params"], optimizers)
    rng = jax.random.key(0)
    history = []
    for _ in range(12):
        state, metrics = step(state, batch, rng)
        history.append({k: float(v) for k, v in metrics.items()})
    assert int(state.nonfinite) == 0
    assert history[0]["caption_loss"] > 0 and history[0]["relation_loss"] > 0
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert history[-1]["caption_loss"] < history[0]["caption_loss"]


# ------------------------------------------------------------------------------------------------
# Caption evaluation


def test_bleu4_hand_computed():
    """Two sentences, hand-counted clipped n-gram matches (corpus-level sums):
    hyp1 'the cat sat on the mat' vs 'the cat is on the mat': 5/6, 3/5, 1/4, 0/3;
    hyp2 'small red ball inside white bowl' vs '... blue bowl': 5/6, 3/5, 2/4, 1/3;
    equal lengths (BP = 1): BLEU = (10/12 * 6/10 * 3/8 * 1/6) ** (1/4) = 2 ** (-5/4)."""
    hyps = [s.split() for s in ("the cat sat on the mat", "small red ball inside white bowl")]
    refs = [s.split() for s in ("the cat is on the mat", "small red ball inside blue bowl")]
    out = captions_lib.corpus_bleu(hyps, refs)
    np.testing.assert_allclose(out["BLEU-4"], 100 * 2 ** -1.25, rtol=1e-6)
    np.testing.assert_allclose(out["precisions"], [100 * 10 / 12, 60.0, 37.5, 100 / 6], rtol=1e-6)
    # A shorter second hypothesis: 'small red ball inside' (4 words, all n-grams match):
    # p = 9/10, 6/8, 3/6, 1/4; BP = exp(1 - 12/10).
    hyps[1] = "small red ball inside".split()
    out = captions_lib.corpus_bleu(hyps, refs)
    expected = math.exp(1 - 12 / 10) * (0.9 * 0.75 * 0.5 * 0.25) ** 0.25
    np.testing.assert_allclose(out["BLEU-4"], 100 * expected, rtol=1e-6)
    assert captions_lib.corpus_bleu(refs, refs)["BLEU-4"] == pytest.approx(100.0)


def test_caption_evaluator_decodes_tokens_and_masks_regions():
    words = ["<pad>", "<start>", "<end>", "<unk>", "small", "red", "ball"]
    ev = captions_lib.CaptionEvaluator(words)
    pred = np.array([[1, 4, 5, 6, 2, 0], [1, 4, 2, 0, 0, 0], [1, 6, 6, 6, 6, 6]])
    gt = np.array([[1, 4, 5, 6, 2, 0], [1, 5, 6, 2, 0, 0], [1, 6, 2, 0, 0, 0]])
    ev.add(pred, gt, np.array([True, True, False]))
    assert ev.hypotheses == [["small", "red", "ball"], ["small"]]
    assert ev.references == [["small", "red", "ball"], ["red", "ball"]]
    out = ev.compute()
    assert out["num_regions"] == 2 and out["mean_length"] == 2.0
    assert out["examples"][0] == ["small red ball", "small red ball"]
    assert captions_lib.tokens_to_words([6, 6, 2, 5], words) == ["ball", "ball"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        captions_lib.tokens_to_words([1, 40, 2], words)
    with pytest.raises(ValueError, match="region_mask"):
        ev.add(pred, gt, np.array([True]))


# ------------------------------------------------------------------------------------------------
# SGDet: the region RPN stage and MSDN on detections + region proposals (tiny preset)


def test_msdn_stages_run_regions_after_the_detector_only_for_sgdet():
    from sgg_jax.training import experiment

    names = lambda c: [p.name for p in experiment.plan_stages(c)]
    seeds = lambda c: {p.name: p.seed_index for p in experiment.plan_stages(c)}
    full = load_config("msdn", "default")
    assert names(full) == ["detector", "regions", "objects", "relations"]
    assert [p.kind for p in experiment.plan_stages(full)] == ["detector", "regions", "relation",
                                                             "relation"]
    no_sgdet = load_config("msdn", "default", **{"eval.modes": "predcls,sgcls"})
    assert names(no_sgdet) == ["objects", "relations"]
    assert len(set(seeds(full).values())) == 4
    for name, seed in seeds(no_sgdet).items():  # relation stages keep their seeds
        assert seeds(full)[name] == seed
    bad = load_config("msdn", "default",
                      **{"train.stages.regions.losses": "region_proposal,object"})
    with pytest.raises(ValueError, match="regions.losses"):
        experiment.validate(bad)


def decode_numpy(deltas, boxes, weights=(10.0, 10.0, 5.0, 5.0)):
    """Independent reference of Fast R-CNN box decoding (continuous widths)."""
    deltas, boxes = np.asarray(deltas, np.float64), np.asarray(boxes, np.float64)
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    cx, cy = boxes[..., 0] + w / 2, boxes[..., 1] + h / 2
    dx, dy = deltas[..., 0] / weights[0], deltas[..., 1] / weights[1]
    dw = np.minimum(deltas[..., 2] / weights[2], np.log(1000 / 16))
    dh = np.minimum(deltas[..., 3] / weights[3], np.log(1000 / 16))
    ncx, ncy, nw, nh = cx + dx * w, cy + dy * h, w * np.exp(dw), h * np.exp(dh)
    return np.stack([ncx - nw / 2, ncy - nh / 2, ncx + nw / 2, ncy + nh / 2], -1)


def clip_numpy(boxes, hw):
    """Clip x1y1x2y2 to [0, w] x [0, h]; hw broadcastable to boxes[..., :2] as (h, w)."""
    out = np.array(boxes, np.float64)
    out[..., 0::2] = np.clip(out[..., 0::2], 0, hw[..., 1:2])
    out[..., 1::2] = np.clip(out[..., 1::2], 0, hw[..., 0:1])
    return out


@pytest.fixture(scope="module")
def regions_run(tmp_path_factory):
    """(exp, initial params, params after the regions stage, writer, workdir): tiny MSDN with
    SGDet, the detector stage skipped (0 steps: its random trunk is enough for the plumbing)."""
    from sgg_jax.training import experiment, trainer
    from training_utils import RecordingWriter

    config = load_config("msdn", "tiny", **{
        "data.cache_dir": str(tmp_path_factory.mktemp("msdn_sgdet_cache")),
        "train.data_parallel": 1, "eval.modes": "sgdet",
        "train.stages.detector.num_steps": 0, "train.log_every": 1,
        "model.detector.score_thresh": 0.0})
    workdir = str(tmp_path_factory.mktemp("msdn_regions"))
    exp = experiment.setup(config, workdir)
    init_params = experiment.init_params(exp, jax.random.key(0))
    writer = RecordingWriter()
    assert [p.name for p in exp.stages[:2]] == ["detector", "regions"]
    plan = exp.stages[1]
    params = trainer.train_stage(exp, plan, init_params, jax.random.key(plan.seed_index), writer)
    return exp, init_params, params, writer, workdir


def test_regions_stage_trains_only_the_region_rpn_and_resumes(regions_run):
    import os

    from sgg_jax.models.region_proposals import REGION_RPN_GROUP
    from sgg_jax.training import trainer
    from training_utils import RecordingWriter, flat_params

    exp, init_params, params, writer, workdir = regions_run
    a, b = flat_params(init_params), flat_params(params)
    moved = {k for k in a if not np.array_equal(a[k], b[k])}
    assert moved and all(k.startswith(f"['{REGION_RPN_GROUP}']") for k in moved), sorted(moved)
    rows = [v for _, prefix, v in writer.rows if prefix == "regions/"]
    assert len(rows) == int(exp.config.train.stages.regions.num_steps)
    assert all(np.isfinite(r["loss"]) and "region_objectness" in r for r in rows)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "regions"))) == [
        "4", "6", "finished.json"]
    # A second run of the stage restores its finished checkpoint instead of training again.
    again = trainer.train_stage(exp, exp.stages[1], init_params, jax.random.key(9),
                                RecordingWriter())
    c = flat_params(again)
    assert all(np.array_equal(b[k], c[k]) for k in b)


def test_msdn_training_rois_and_box_head_losses(regions_run):
    """MSDN's training RoIs (make_msdn_roi_sampler) checked against NumPy IoUs / decoding on a
    real batch, then a stage trained with the `region` and `object_box` losses:
    every part reported and finite, the proposal networks frozen, the box heads trained."""
    from sgg_jax.models import DETECTOR_GROUP
    from sgg_jax.models.region_proposals import REGION_RPN_GROUP, make_msdn_roi_sampler
    from sgg_jax.training import data as data_lib
    from sgg_jax.training import mesh as mesh_lib
    from sgg_jax.training import trainer
    from training_utils import RecordingWriter, flat_params

    exp, _, params, _, _ = regions_run
    rcfg = msdn._rpn_config(exp.config)
    sampler = jax.jit(make_msdn_roi_sampler(exp.detector(), rcfg, object_rois=8,
                                            detector_state=exp.detector_state))
    batch = mesh_lib.to_global(next(iter(data_lib.train_loader(exp.config, exp.data, exp.mesh,
                                                               seed=0))), exp.mesh)
    rois = jax.device_get(sampler(params, batch, jax.random.key(3)))
    host = jax.device_get(batch)
    n_fg_regions = n_fg_objects = 0
    for b in range(host.images.shape[0]):
        rm, fg = rois.inputs["region_mask"][b], rois.region_fg[b]
        boxes, tokens = rois.inputs["region_boxes"][b], rois.inputs["region_tokens"][b]
        assert rois.inputs["region_boxes"].shape[1] == rcfg.train_rois
        assert not (fg & ~rm).any() and fg.sum() <= rcfg.train_rois * rcfg.train_fg_fraction
        rank = np.where(fg, 0, np.where(rm, 1, 2))
        assert np.all(np.diff(rank) >= 0)  # fg, then bg, then padding
        gmask = host.region_mask[b]
        if gmask.any() and rm.any():
            iou = np_iou(boxes[rm], host.region_boxes[b][gmask])
            best = iou.argmax(1)
            f = fg[rm]
            assert (iou.max(1)[f] >= 0.5 - 1e-6).all() and (iou.max(1)[~f] < 0.5 + 1e-6).all()
            # Captions only for the first max_fg rows (fg come first); non-fg rows all pad.
            nf = int(fg.sum())
            assert tokens.shape[0] == int(rcfg.train_rois * rcfg.train_fg_fraction) >= nf
            np.testing.assert_array_equal(tokens[:nf], host.region_tokens[b][gmask][best[f]])
            assert (tokens[nf:] == captioning.PAD).all()
            np.testing.assert_allclose(
                decode_numpy(rois.region_deltas[b][rm][f], boxes[rm][f]),
                host.region_boxes[b][gmask][best[f]], atol=1e-3)
            n_fg_regions += int(f.sum())
        pl, pb = rois.proposal_labels[b], rois.inputs["proposal_boxes"][b]
        omask = host.box_mask[b] & (host.labels[b] > 0)
        if (pl > 0).any():
            iou = np_iou(pb[pl > 0], host.boxes[b][omask])
            best = iou.argmax(1)
            assert (iou.max(1) >= 0.5 - 1e-6).all()
            np.testing.assert_array_equal(pl[pl > 0], host.labels[b][omask][best])
            np.testing.assert_allclose(decode_numpy(rois.proposal_deltas[b][pl > 0],
                                                    pb[pl > 0]),
                                       host.boxes[b][omask][best], atol=1e-3)
            n_fg_objects += int((pl > 0).sum())
    assert n_fg_regions > 0 and n_fg_objects > 0

    # The relations stage (configs/msdn.py trains the box heads there).
    plan = next(p for p in exp.stages if p.name == "relations")
    assert "object_box" in plan.config.losses
    writer = RecordingWriter()
    trained = trainer.train_stage(exp, plan, params, jax.random.key(plan.seed_index), writer)
    rows = [v for _, prefix, v in writer.rows if prefix == "relations/"]
    parts = ("region_objectness_loss", "region_box_loss", "object_box_loss", "caption_loss")
    assert rows and all(np.isfinite(r[k]) for r in rows for k in parts + ("loss",))
    a, c = flat_params(params), flat_params(trained)
    moved = {k for k in a if not np.array_equal(a[k], c[k])}
    assert not any(k.startswith((f"['{DETECTOR_GROUP}']", f"['{REGION_RPN_GROUP}']"))
                   for k in moved)
    for head in ("['obj_box']", "['region_box']", "['region_objectness']"):
        assert any(head in k for k in moved), head


def test_msdn_sgdet_end_to_end_on_the_region_proposals(regions_run):
    """MSDN SGDet through the run's jitted step (configs/msdn.py: boxes refined by MSDN's box
    heads) and the evaluators (R@K, box mAP), and the properties: the model read the region
    RPN's proposals (fixed shape, real first, inside the image) and the detector's boxes; the
    returned boxes are those moved by its box heads (each detection by its label's deltas,
    checked against a NumPy decoding); region scores are its region objectness. (The trainer's
    evaluate() loop around the same step is covered by test_sgdet.py.)"""
    from sgg_jax.evaluation import DetectionEvaluator, SGGEvaluator
    from sgg_jax.models import postprocess
    from sgg_jax.models.region_proposals import make_region_proposal_fn
    from sgg_jax.training import data as data_lib
    from sgg_jax.training import eval_loop

    exp, _, params, _, _ = regions_run
    assert exp.config.eval.sgdet_refine_boxes  # configs/msdn.py: MSDN's box heads move boxes
    step = jax.jit(eval_loop.make_sgdet_step(exp))
    evaluator = SGGEvaluator("sgdet", exp.facts.num_predicates)
    det_evaluator = DetectionEvaluator(exp.facts.num_classes)
    ground_truth = exp.data.ground_truth("test")
    for batch in data_lib.eval_loader(exp.config, exp.data, exp.mesh, "test"):
        images, sizes = jnp.asarray(batch.images), jnp.asarray(batch.image_sizes)
        out = jax.device_get(step(params, images, sizes))
        for gt, pred, _ in eval_loop.batch_to_examples(batch, out, ground_truth):
            det_evaluator.add(gt, dict(boxes=pred.pop("det_boxes"),
                                       labels=pred.pop("det_labels"),
                                       scores=pred.pop("det_scores")))
            evaluator.add(gt, pred)
    r = evaluator.compute()
    assert r["num_images"] == len(exp.data.sources["test"])
    assert 0.0 <= r["R@20"] <= r["R@50"] <= r["R@100"] <= 100.0
    assert 0.0 <= det_evaluator.compute()["AP50"] <= 100.0

    # The last batch: MSDN read the proposals; the returned regions are them, refined.
    propose = make_region_proposal_fn(exp.detector(), msdn._rpn_config(exp.config),
                                      detector_state=exp.detector_state)
    boxes, _, valid = jax.jit(propose)(params, images, sizes)
    q = int(exp.config.model.region_rpn.num_proposals)
    assert out["region_boxes"].shape == (images.shape[0], q, 4)
    np.testing.assert_array_equal(out["region_mask"], valid)
    v = np.asarray(valid)
    assert v.any() and np.all(np.diff(v.astype(int), axis=1) <= 0)  # real proposals first
    rb = np.asarray(boxes)[v]
    assert np.all(rb[:, 2] >= rb[:, 0]) and np.all(rb[:, 3] >= rb[:, 1]) and rb.min() >= 0
    assert rb[:, 2:].max() <= exp.config.input.image_size

    model = exp.model("sgdet")
    variables = {"params": exp.relation_params(params), **exp.model_state}

    def forward(region_boxes):
        inputs = ModelInputs(
            images=images, image_sizes=sizes, boxes=out["det_boxes"], box_mask=out["box_mask"],
            labels=out["det_labels"], pairs=out["pairs"], pair_mask=out["pair_mask"],
            region_boxes=region_boxes, region_mask=out["region_mask"])
        outputs = model.apply(variables, inputs, train=False)
        return postprocess.predict_scores(outputs, "sgdet")["rel_scores"], outputs.aux

    run = jax.jit(forward)
    rel, aux = jax.device_get(run(boxes))
    pm, bm = np.asarray(out["pair_mask"]), np.asarray(out["box_mask"])
    assert pm.any()
    np.testing.assert_allclose(rel[pm], np.asarray(out["rel_scores"])[pm], rtol=1e-5, atol=1e-6)
    # Refinement: each detection moved by its label's deltas (NumPy decoding), the proposals
    # by the region deltas; scores = sigmoid(region objectness).
    d = np.take_along_axis(aux["obj_box_deltas"], np.asarray(out["labels"])[..., None, None],
                           axis=2)[..., 0, :]
    hw = np.asarray(sizes, np.float64)[:, None, :]
    np.testing.assert_allclose(out["boxes"][bm], clip_numpy(decode_numpy(
        d, out["det_boxes"]), hw)[bm], rtol=1e-5, atol=1e-3)
    assert not np.allclose(out["boxes"][bm], out["det_boxes"][bm], atol=1e-3)
    np.testing.assert_allclose(out["region_boxes"][v], clip_numpy(decode_numpy(
        aux["region_deltas"], boxes), hw)[v], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out["region_scores"][v],
                               np.asarray(jax.nn.sigmoid(aux["region_scores"]))[v],
                               rtol=1e-5, atol=1e-6)
    # Other regions give other predictions, so the match above is not vacuous.
    whole = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 128.0, 128.0]), boxes.shape)
    assert not np.allclose(np.asarray(run(whole)[0])[pm], np.asarray(out["rel_scores"])[pm],
                           atol=1e-6)


def test_sgp_on_msdn_runs_msdn_sgdet_and_starts_equal_to_it(regions_run):
    """SGP on an MSDN base in SGDet (sgg_jax/models/sgp.py `resolve`): the run plans MSDN's
    `regions` stage; a restore-only stage loads the region RPN from MSDN's checkpoint; SGP's
    jitted SGDet step reads MSDN's region proposals and box heads through MSDN's own hooks, so
    at initialisation (GPI's corrections are zero) it returns MSDN's boxes, regions, labels and
    scores."""
    from sgg_jax.models.region_proposals import REGION_RPN_GROUP
    from sgg_jax.training import data as data_lib
    from sgg_jax.training import eval_loop, experiment, trainer
    from training_utils import RecordingWriter, flat_params

    exp, _, params, _, workdir = regions_run
    source = exp.checkpoint_dir("regions")
    config = load_config("sgp", "msdn,tiny", **{
        "data.cache_dir": exp.config.data.cache_dir, "train.data_parallel": 1,
        "eval.modes": "sgdet", "train.stages.detector.num_steps": 0,
        "model.detector.score_thresh": 0.0, "train.stages.regions.restore_from": source,
        "train.stages.regions.num_steps": 0,
        "train.stages.regions.restore_groups": REGION_RPN_GROUP})
    sgp_exp = experiment.setup(config, str(workdir) + "_sgp")
    assert [(p.name, p.kind) for p in sgp_exp.stages[:2]] == [("detector", "detector"),
                                                             ("regions", "regions")]
    assert sgp_exp.config.eval.sgdet_refine_boxes and sgp_exp.spec.evaluations == ("captions",)
    init = experiment.init_params(sgp_exp, jax.random.key(1))
    assert set(init) == {"base", "gpi", "detector", REGION_RPN_GROUP}
    loaded = trainer.train_stage(sgp_exp, sgp_exp.stages[1], init, jax.random.key(2),
                                 RecordingWriter())
    got, want = flat_params(loaded[REGION_RPN_GROUP]), flat_params(params[REGION_RPN_GROUP])
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert not os.path.exists(sgp_exp.checkpoint_dir("regions"))  # it trained nothing

    sgp_params = dict(loaded, base=exp.relation_params(params), detector=params["detector"])
    sgp_step = jax.jit(eval_loop.make_sgdet_step(sgp_exp))
    msdn_step = jax.jit(eval_loop.make_sgdet_step(exp))
    batch = next(iter(data_lib.eval_loader(exp.config, exp.data, exp.mesh, "test")))
    images, sizes = jnp.asarray(batch.images), jnp.asarray(batch.image_sizes)
    ours = jax.device_get(sgp_step(sgp_params, images, sizes))
    theirs = jax.device_get(msdn_step(params, images, sizes))
    assert np.asarray(theirs["pair_mask"]).any() and np.asarray(theirs["region_mask"]).any()
    assert set(theirs) <= set(ours)
    assert {"boxes", "labels", "region_boxes", "region_scores", "rel_scores"} <= set(theirs)
    for key in theirs:
        np.testing.assert_allclose(np.asarray(ours[key], np.float64),
                                   np.asarray(theirs[key], np.float64), rtol=1e-5, atol=1e-5,
                                   err_msg=key)
