"""Tests of the backbones, RoI features, FREQ, IMP, the registry and the post-processing."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sgg_jax import losses
from sgg_jax.models import ModelInputs, ModelOutputs, build_model, get_spec
from sgg_jax.models import backbone as backbone_lib
from sgg_jax.models.priors import frequency_log_table
from sgg_jax.models import postprocess
from training_utils import make_facts

C, P = 4, 3  # object classes, predicates
B, S, O, M = 2, 64, 5, 8


def model_config(name: str = "imp", **overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        name=name, backbone="small_resnet", hidden_dim=16, num_iterations=3, roi_size=7,
        sampling_ratio=2, fc_dim=32, dtype="float32", dropout=0.0))
    cfg.update(overrides)
    return cfg


def facts(fg=None):
    """The dataset facts a model is built from (C classes, P predicates, training counts)."""
    return make_facts(C, P, fg_matrix=fg)


def make_inputs(seed: int = 0, n_boxes=(5, 3), n_pairs=(8, 4)) -> ModelInputs:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)
    xy = rng.uniform(0, 40, (B, O, 2))
    wh = rng.uniform(8, 24, (B, O, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    box_mask = np.arange(O)[None] < np.array(n_boxes)[:, None]
    labels = np.where(box_mask, rng.integers(1, C + 1, (B, O)), 0).astype(np.int32)
    pairs = np.zeros((B, M, 2), np.int32)
    pair_mask = np.zeros((B, M), bool)
    for b in range(B):
        cand = [(i, j) for i in range(n_boxes[b]) for j in range(n_boxes[b]) if i != j]
        pick = rng.choice(len(cand), n_pairs[b], replace=False)
        pairs[b, :n_pairs[b]] = np.array(cand)[pick]
        pair_mask[b, :n_pairs[b]] = True
    return ModelInputs(images=jnp.asarray(images), image_sizes=jnp.full((B, 2), S, jnp.int32),
                       boxes=jnp.asarray(boxes), box_mask=jnp.asarray(box_mask),
                       labels=jnp.asarray(labels), pairs=jnp.asarray(pairs),
                       pair_mask=jnp.asarray(pair_mask))


def init(model, inputs, seed=0):
    """Variables with the shapes `model.init` gives (traced by eval_shape) filled on the host:
    kernels ~ N(0, 1/fan_in), biases 0, norm scales 1. Compiling the jitted init (one random
    initialiser per parameter) costs far more CPU time than the rest of a test."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, False), inputs)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel" or leaf.ndim >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def small_imp(mode="sgcls", **overrides):
    return build_model(model_config("imp", **overrides), facts(), mode)


@pytest.fixture(scope="module")
def imp_setup():
    model = small_imp()
    inputs = make_inputs()
    variables = init(model, inputs)
    apply = jax.jit(lambda v, x: model.apply(v, x, False))
    return model, variables, inputs, apply


# ------------------------------------------------------------------------------------- backbone

@pytest.mark.parametrize("name,kwargs,stride", [
    ("small_resnet", dict(widths=(8, 8, 16, 16)), 16),
    ("small_resnet_s8", dict(widths=(8, 8, 16, 16)), 8),
    ("vgg16", dict(width_multiplier=1 / 32), 16),
    ("resnet50", dict(width_multiplier=1 / 16), 16),
    ("resnet50", dict(width_multiplier=1 / 16, norm="group"), 16),
])
def test_backbone_output_stride(name, kwargs, stride):
    net = backbone_lib.build_backbone(name, jnp.float32, **kwargs)
    images = jnp.zeros((1, 64, 64, 3), jnp.uint8)
    # Shapes only (no compilation): eval_shape of init and apply.
    variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), images)
    feats = jax.eval_shape(lambda v, x: net.apply(v, x)[0], variables, images)
    assert net.stride == stride
    assert feats.shape[:3] == (1, 64 // stride, 64 // stride)
    if name == "resnet50" and kwargs.get("norm", "frozen_bn") == "frozen_bn":
        # Statistics are a separate, non-trainable collection.
        assert "batch_stats" in variables
        assert "mean" in variables["batch_stats"]["bn1"]


def test_normalize_images_imagenet():
    img = jnp.full((1, 1, 1, 3), 255, jnp.uint8)
    out = backbone_lib.normalize_images(img)
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array(backbone_lib.IMAGENET_MEAN))
                               / np.array(backbone_lib.IMAGENET_STD), rtol=1e-6)


def test_unknown_backbone_rejected():
    with pytest.raises(ValueError, match="model.backbone"):
        backbone_lib.build_backbone("alexnet")


# ------------------------------------------------------------------------------------- FREQ

def _hand_fg():
    fg = np.zeros((C + 1, C + 1, P + 1), np.int64)
    fg[1, 2] = [0, 5, 1, 0]    # (1, 2): predicate 1
    fg[2, 1] = [0, 0, 2, 7]    # (2, 1): predicate 3
    fg[3, 3] = [0, 1, 4, 1]    # (3, 3): predicate 2
    return fg


def test_frequency_table_hand_values():
    fg = _hand_fg()
    bg = np.zeros((C + 1, C + 1), np.int64)
    bg[1, 2] = 3
    table = frequency_log_table(fg, bg)
    # Row (1, 2): counts [bg+1=4, 5, 1, 0], total 10.
    np.testing.assert_allclose(table[1, 2], np.log(np.array([4, 5, 1, 0]) / 10 + 1e-3), rtol=1e-6)
    # A pair never seen: only the add-one background -> background is most likely.
    assert np.argmax(table[4, 4]) == 0
    with pytest.raises(ValueError, match="fg_matrix"):
        frequency_log_table(np.zeros((3, 4, 2)))


@pytest.fixture(scope="module")
def freq_variables(imp_setup):
    """FREQ's parameters, grafted from the IMP fixture (same backbone and object RoI head) to
    save an initialisation compile; the object classifier is a fresh random linear map."""
    imp_params = imp_setup[1]["params"]
    rng = np.random.default_rng(5)
    fc_dim = imp_params["roi_features"]["obj_fc"]["fc7"]["kernel"].shape[1]
    params = {
        "backbone": imp_params["backbone"],
        "roi_features": {"obj_fc": imp_params["roi_features"]["obj_fc"]},
        "obj_classifier": {"kernel": jnp.asarray(rng.normal(0, 0.1, (fc_dim, C + 1)), jnp.float32),
                           "bias": jnp.zeros((C + 1,), jnp.float32)},
    }
    model = build_model(model_config("freq"), facts(_hand_fg()), "sgcls")
    expected = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, False),
                              make_inputs())["params"]
    assert jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(params)
    return {"params": params}


def test_freq_predcls_equals_table_argmax(freq_variables):
    fg = _hand_fg()
    model = build_model(model_config("freq"), facts(fg), "predcls")
    inputs = make_inputs()
    labels = np.zeros((B, O), np.int32)
    labels[0, :5] = [1, 2, 3, 3, 4]
    labels[1, :3] = [2, 1, 1]
    pairs = np.zeros((B, M, 2), np.int32)
    pairs[0, :4] = [[0, 1], [1, 0], [2, 3], [0, 4]]
    pairs[1, :2] = [[0, 1], [2, 0]]
    inputs = inputs.replace(labels=jnp.asarray(labels), pairs=jnp.asarray(pairs))
    variables = freq_variables
    out = jax.jit(lambda v, x: model.apply(v, x, False))(variables, inputs)
    pred = np.asarray(out.rel_logits.argmax(-1))
    # Hand-derived: (1,2)->1, (2,1)->3, (3,3)->2, (1,4) unseen -> background 0.
    np.testing.assert_array_equal(pred[0, :4], [1, 3, 2, 0])
    # Image 1: labels (2,1) -> 3 ; (1,2) -> 1.
    np.testing.assert_array_equal(pred[1, :2], [3, 1])
    assert set(variables["params"]) == {"backbone", "roi_features", "obj_classifier"}


def test_freq_sgcls_uses_predicted_labels(freq_variables):
    fg = _hand_fg()
    model = build_model(model_config("freq"), facts(fg), "sgcls")
    inputs = make_inputs()
    variables = freq_variables
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    # Classifier forced to class 3 everywhere (bias only); GT labels must be ignored.
    params["obj_classifier"]["kernel"] = jnp.zeros_like(params["obj_classifier"]["kernel"])
    params["obj_classifier"]["bias"] = jnp.array([0.0, 0.0, 0.0, 5.0, 0.0])
    out = jax.jit(lambda v, x: model.apply(v, x, False))({"params": params}, inputs)
    table = frequency_log_table(fg, np.zeros((C + 1, C + 1)))
    np.testing.assert_allclose(out.rel_logits, np.broadcast_to(table[3, 3], (B, M, P + 1)),
                               rtol=1e-6)


# ------------------------------------------------------------------------------------- IMP

def test_imp_shapes_and_groups(imp_setup):
    model, variables, inputs, apply = imp_setup
    out = apply(variables, inputs)
    assert isinstance(out, ModelOutputs)
    assert out.obj_logits.shape == (B, O, C + 1)
    assert out.rel_logits.shape == (B, M, P + 1)
    assert set(variables["params"]) == set(get_spec("imp").param_groups)


def test_imp_freq_bias_adds_table_for_the_right_labels(imp_setup):
    """model.freq_bias: logits = plain IMP logits + table[subj, obj]; GT labels in PredCls and in
    training, the object classifier's argmax in SGCls evaluation (hand-forced to class 3)."""
    _, variables, inputs, _ = imp_setup
    fg = _hand_fg()
    table = frequency_log_table(fg, np.zeros((C + 1, C + 1)))
    plain = small_imp("sgcls").apply(variables, inputs, False)
    labels = np.asarray(inputs.labels)
    pairs = np.asarray(inputs.pairs)
    subj = np.take_along_axis(labels, pairs[..., 0], 1)
    obj = np.take_along_axis(labels, pairs[..., 1], 1)
    for mode, train in (("predcls", False), ("sgcls", True)):
        model = build_model(model_config("imp", freq_bias=True), facts(fg), mode)
        out = model.apply(variables, inputs, train)
        np.testing.assert_allclose(out.rel_logits, np.asarray(plain.rel_logits) + table[subj, obj],
                                   rtol=1e-5, atol=1e-5)
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["obj_classifier"]["kernel"] = jnp.zeros_like(params["obj_classifier"]["kernel"])
    params["obj_classifier"]["bias"] = jnp.array([0.0, 0.0, 0.0, 5.0, 0.0])
    plain = small_imp("sgcls").apply({"params": params}, inputs, False)
    model = build_model(model_config("imp", freq_bias=True), facts(fg), "sgcls")
    out = model.apply({"params": params}, inputs, False)
    np.testing.assert_allclose(out.rel_logits, np.asarray(plain.rel_logits) + table[3, 3],
                               rtol=1e-5, atol=1e-5)
    no_counts = dataclasses.replace(facts(), statistics=dataclasses.replace(
        facts().statistics, fg_matrix=None))
    with pytest.raises(ValueError, match="fg_matrix"):
        build_model(model_config("imp", freq_bias=True), no_counts, "sgcls")


def test_imp_padding_does_not_change_real_outputs(imp_setup):
    model, variables, inputs, apply = imp_setup
    out = apply(variables, inputs)
    box_mask, pair_mask = np.asarray(inputs.box_mask), np.asarray(inputs.pair_mask)
    rng = np.random.default_rng(1)
    boxes = np.asarray(inputs.boxes).copy()
    boxes[~box_mask] = rng.uniform(0, 60, (int((~box_mask).sum()), 4))
    pairs = np.asarray(inputs.pairs).copy()
    pairs[~pair_mask] = rng.integers(0, O, (int((~pair_mask).sum()), 2))
    labels = np.asarray(inputs.labels).copy()
    labels[~box_mask] = 2
    changed = inputs.replace(boxes=jnp.asarray(boxes), pairs=jnp.asarray(pairs),
                             labels=jnp.asarray(labels))
    out2 = apply(variables, changed)
    np.testing.assert_allclose(np.asarray(out2.obj_logits)[box_mask],
                               np.asarray(out.obj_logits)[box_mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out2.rel_logits)[pair_mask],
                               np.asarray(out.rel_logits)[pair_mask], rtol=1e-5, atol=1e-5)
    # Sanity: the real outputs do depend on real pairs (messages flow).
    pairs3 = np.asarray(inputs.pairs).copy()
    pairs3[0, 0] = pairs3[0, 0][::-1]
    out3 = apply(variables, inputs.replace(pairs=jnp.asarray(pairs3)))
    assert not np.allclose(np.asarray(out3.obj_logits)[0, :5], np.asarray(out.obj_logits)[0, :5])


def test_imp_permutation_equivariance(imp_setup):
    model, variables, inputs, apply = imp_setup
    out = apply(variables, inputs)
    rng = np.random.default_rng(2)
    perm = np.stack([rng.permutation(O) for _ in range(B)])  # new position k holds old perm[k]
    inv = np.argsort(perm, axis=1)
    pair_perm = np.stack([rng.permutation(M) for _ in range(B)])
    take = lambda a, p: np.take_along_axis(a, p.reshape(p.shape + (1,) * (a.ndim - 2)), axis=1)
    old_pairs = take(np.asarray(inputs.pairs), pair_perm)
    new_pairs = np.stack([inv[b][old_pairs[b]] for b in range(B)]).astype(np.int32)
    permuted = inputs.replace(
        boxes=jnp.asarray(take(np.asarray(inputs.boxes), perm)),
        box_mask=jnp.asarray(take(np.asarray(inputs.box_mask), perm)),
        labels=jnp.asarray(take(np.asarray(inputs.labels), perm)),
        pairs=jnp.asarray(new_pairs),
        pair_mask=jnp.asarray(take(np.asarray(inputs.pair_mask), pair_perm)))
    out_p = apply(variables, permuted)
    bm = np.asarray(permuted.box_mask)
    np.testing.assert_allclose(np.asarray(out_p.obj_logits)[bm],
                               take(np.asarray(out.obj_logits), perm)[bm], rtol=1e-4, atol=1e-5)
    pm = np.asarray(permuted.pair_mask)
    np.testing.assert_allclose(np.asarray(out_p.rel_logits)[pm],
                               take(np.asarray(out.rel_logits), pair_perm)[pm],
                               rtol=1e-4, atol=1e-5)


def test_imp_adam_steps_reduce_loss(imp_setup):
    _, variables, inputs, _ = imp_setup
    model = small_imp(num_iterations=2)  # same parameters, shorter graph to compile
    pair_labels = jnp.asarray(np.random.default_rng(3).integers(0, P + 1, (B, M)), jnp.int32)
    # Stage-2 style: backbone and RoI head frozen (their backward pass is not compiled: a faster
    # test; RoI-align gradients are tested with the kernel).
    frozen_groups = ("backbone", "roi_features")
    frozen = {k: v for k, v in variables["params"].items() if k in frozen_groups}
    params = {k: v for k, v in variables["params"].items() if k not in frozen_groups}
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    # Everything is passed as an argument: arrays closed over become HLO constants, and XLA then
    # spends (much) compile time constant-folding the backbone on them.
    def loss_fn(p, frozen, inputs, pair_labels):
        out = model.apply({"params": {**p, **frozen}}, inputs, True)
        return (losses.object_loss(out.obj_logits, inputs.labels, inputs.box_mask)
                + losses.edge_loss(out.rel_logits, pair_labels, inputs.pair_mask, "dnorm"))

    @jax.jit
    def step(p, s, frozen, inputs, pair_labels):
        loss, grads = jax.value_and_grad(loss_fn)(p, frozen, inputs, pair_labels)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    history = []
    for _ in range(20):
        params, opt_state, loss = step(params, opt_state, frozen, inputs, pair_labels)  # pre-update
        history.append(float(loss))
    first, final = history[0], history[-1]
    assert np.isfinite(final)
    assert final < 0.8 * first, (first, final)


def test_imp_obj_roi_residual_logits(imp_setup):
    """model.obj_roi_residual: obj_logits = RoI features @ obj_classifier + final node states @
    relation_head/obj_classifier (NumPy reference on the captured features). The node term is
    zero-initialised, so until the relation stage trains it the logits are the RoI classifier's
    alone and message passing (here: a reversed pair) cannot change them."""
    from sgg_jax.models.imp import IMPRelationHead

    _, _, inputs, _ = imp_setup
    model = small_imp(obj_roi_residual=True, num_iterations=1)
    params = init(model, inputs, seed=5)["params"]  # host-filled: node classifier non-zero
    assert set(params) == set(get_spec("imp").param_groups)
    assert params["obj_classifier"]["kernel"].shape == (32, C + 1)  # reads the RoI features
    wanted = lambda mdl, method: mdl.name in ("roi_features", "relation_head")
    apply = jax.jit(lambda v, x: model.apply(v, x, False, capture_intermediates=wanted,
                                             mutable=["intermediates"]))

    def logits_and_reference(p, x):
        out, state = apply({"params": p}, x)
        obj_feats = np.asarray(state["intermediates"]["roi_features"]["__call__"][0][0])
        nodes = np.asarray(state["intermediates"]["relation_head"]["__call__"][0][0])
        roi, node = p["obj_classifier"], p["relation_head"]["obj_classifier"]
        unary = obj_feats @ np.asarray(roi["kernel"]) + np.asarray(roi["bias"])
        context = nodes @ np.asarray(node["kernel"]) + np.asarray(node["bias"])
        return np.asarray(out.obj_logits), unary, context

    got, unary, context = logits_and_reference(params, inputs)
    assert np.abs(context).max() > 1e-2  # the node term does contribute here
    np.testing.assert_allclose(got, unary + context, rtol=1e-4, atol=1e-4)

    # Initialisation: the head's node classifier starts at exactly zero ...
    head = IMPRelationHead(P, hidden_dim=8, num_iterations=1, num_obj_classes=C)
    head_params = head.init(jax.random.PRNGKey(0), jnp.ones((1, 3, 6)), jnp.ones((1, 2, 6)),
                            jnp.array([[[0, 1], [1, 2]]]), jnp.ones((1, 2), bool),
                            jnp.ones((1, 3), bool))["params"]["obj_classifier"]
    assert not any(np.any(np.asarray(v)) for v in jax.tree_util.tree_leaves(head_params))
    # ... so the logits are the RoI classifier's, whatever the graph.
    params["relation_head"]["obj_classifier"] = jax.tree_util.tree_map(
        jnp.zeros_like, params["relation_head"]["obj_classifier"])
    got, unary, _ = logits_and_reference(params, inputs)
    np.testing.assert_allclose(got, unary, rtol=1e-4, atol=1e-4)
    pairs = np.asarray(inputs.pairs).copy()
    pairs[0, 0] = pairs[0, 0][::-1]
    got_rev, _, _ = logits_and_reference(params, inputs.replace(pairs=jnp.asarray(pairs)))
    np.testing.assert_allclose(got_rev, got, rtol=1e-5, atol=1e-5)


def test_imp_bfloat16_and_dropout_run(imp_setup):
    _, variables, inputs, _ = imp_setup
    # Parameters stay float32 whatever the compute dtype, so the float32 model's variables fit.
    model = small_imp(dtype="bfloat16", dropout=0.5, num_iterations=1)
    out = jax.jit(lambda v, x, r: model.apply(v, x, True, rngs={"dropout": r}))(
        variables, inputs, jax.random.PRNGKey(1))
    assert out.rel_logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(out.rel_logits)).all()


# ------------------------------------------------------------------------------------- registry

def test_build_model_rejects_bad_config():
    from sgg_jax.models import registry
    names = ", ".join(sorted(registry.BUILTIN_MODULES))  # every built-in one, by name
    assert {"freq", "imp", "motifs", "kern", "msdn"} <= set(registry.BUILTIN_MODULES)
    with pytest.raises(ValueError, match=f"model.name='nosuch'.*registered models: {names}"):
        build_model(model_config("nosuch"), facts(), "sgcls")
    with pytest.raises(ValueError, match="model.dtype"):
        build_model(model_config("imp", dtype="float16"), facts(), "sgcls")
    with pytest.raises(ValueError, match="mode"):
        build_model(model_config("imp"), facts(), "preddet")
    with pytest.raises(ValueError, match="fg_matrix"):
        build_model(model_config("freq"), make_facts(C + 1, P, fg_matrix=_hand_fg()), "sgcls")
    cfg = model_config("imp")
    del cfg["fc_dim"]
    with pytest.raises(ValueError, match="fc_dim"):
        build_model(cfg, facts(), "sgcls")


# ------------------------------------------------------------------------------------- postprocess

def test_predict_scores_sgcls_predcls_and_the_model_s_own_labels():
    """SGCls: argmax over classes 1..C of the softmax and its probability (NumPy); PredCls: the
    given labels with score 1; a model's own obj_labels / obj_scores replace the argmax."""
    inputs = make_inputs()
    rng = np.random.default_rng(4)
    obj_logits = rng.normal(size=(B, O, C + 1)).astype(np.float32)
    rel_logits = rng.normal(size=(B, M, P + 1)).astype(np.float32)
    outputs = ModelOutputs(obj_logits=jnp.asarray(obj_logits), rel_logits=jnp.asarray(rel_logits))
    got = jax.device_get(postprocess.predict_scores(outputs, "sgcls"))
    probs = np.exp(obj_logits) / np.exp(obj_logits).sum(-1, keepdims=True)
    np.testing.assert_array_equal(got["obj_labels"], probs[..., 1:].argmax(-1) + 1)
    np.testing.assert_allclose(got["obj_scores"],
                               np.take_along_axis(probs, got["obj_labels"][..., None], -1)[..., 0],
                               rtol=1e-5)
    rs = np.exp(rel_logits) / np.exp(rel_logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(got["rel_scores"], rs, rtol=1e-5)
    pc = jax.device_get(postprocess.predict_scores(outputs, "predcls", inputs.labels))
    np.testing.assert_array_equal(pc["obj_labels"], np.asarray(inputs.labels))
    np.testing.assert_array_equal(pc["obj_scores"], np.ones((B, O)))
    own = np.full((B, O), 2, np.int32)
    decided = outputs.replace(obj_labels=jnp.asarray(own))
    got = jax.device_get(postprocess.predict_scores(decided, "sgdet"))
    np.testing.assert_array_equal(got["obj_labels"], own)
    np.testing.assert_allclose(got["obj_scores"], probs[..., 2], rtol=1e-5)
    scored = decided.replace(obj_scores=jnp.full((B, O), 0.25))
    np.testing.assert_array_equal(
        jax.device_get(postprocess.predict_scores(scored, "sgcls"))["obj_scores"], 0.25)


def test_pair_masks_hand_case():
    """Subject left half, object right half of their union box (2 x 2 grid)."""
    from sgg_jax.models.roi_features import pair_masks

    boxes = jnp.array([[[0.0, 0.0, 10.0, 10.0], [10.5, 0.0, 20.0, 10.0]]])
    pairs = jnp.array([[[0, 1], [1, 0]]])
    m = np.asarray(pair_masks(boxes, pairs, 2))
    assert m.shape == (1, 2, 2, 2, 2)
    np.testing.assert_array_equal(m[0, 0, ..., 0], [[1, 0], [1, 0]])  # subject 0: left
    np.testing.assert_array_equal(m[0, 0, ..., 1], [[0, 1], [0, 1]])  # object 1: right
    np.testing.assert_array_equal(m[0, 1, ..., 0], m[0, 0, ..., 1])  # swapped pair
    np.testing.assert_array_equal(m[0, 1, ..., 1], m[0, 0, ..., 0])
