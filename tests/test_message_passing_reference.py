"""IMP's and MSDN's message passing against independent NumPy references of the papers' equations.

The references below are written from the equations (docs/models.md, "Message passing
equations"), not from the Flax code: per image, plain Python loops over the real objects,
pairs and regions, float64, reading the kernels and biases from the Flax parameter tree by name.
They never look at padded rows, so padding that leaked into a real output would also fail them.

- IMP (Xu et al., CVPR 2017, as neural-motifs / Scene-Graph-Benchmark re-implement it): node and
  edge GRUs, four scalar gates sigmoid(w . [h_vertex, h_edge] + b), node messages summed over
  outgoing and incoming edges.
- MSDN (Li et al., ICCV 2017): gates mean_k sigmoid(W [relu t, relu s] + b)_k, objects <-
  phrases, phrases <- subject, object and covering regions, regions <- phrases (means over the
  links), residual update units.

The GRU is flax.linen.GRUCell's convention (checked against flax's source):
  r = sigmoid(x W_ir + b_ir + h W_hr),  z = sigmoid(x W_iz + b_iz + h W_hz),
  n = tanh(x W_in + b_in + r * (h W_hn + b_hn)),  h' = (1 - z) * n + z * h.

Every reference is also run with deliberately wrong variants (gates swapped, GRU gates swapped,
another link threshold, sums instead of means, ...): each must differ from the model, so a
comparison that passes is not one that could not fail.
"""
from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.models.imp import IMPModel, IMPRelationHead
from sgg_jax.models.interface import ModelInputs
from sgg_jax.models.msdn import MSDNModel, MSDNRefinement

C, P = 4, 3            # object classes, predicates
B, O, M, Q = 2, 5, 7, 5  # images, boxes, pairs, regions (each padded)
F, H, W = 8, 6, 5      # input feature size, hidden size, MSDN gate width
N_BOXES = (5, 3)       # real boxes per image (image 1: boxes 3, 4 are padding)
# Real pairs per image. Image 0: box 0 is the subject of three pairs, box 4 is in none;
# image 1: box 2 is only an object.
REAL_PAIRS = ([(0, 1), (0, 2), (1, 0), (2, 3), (0, 3), (3, 1)], [(0, 1), (1, 0), (0, 2)])
N_REGIONS = (4, 2)
S = 64                 # canvas size
TOL = dict(rtol=1e-4, atol=2e-5)
WRONG = 1e-3           # a wrong reference must differ from the model by more than this


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def relu(x):
    return np.maximum(x, 0.0)


def as_numpy(tree):
    """A Flax parameter tree as nested dicts of float64 NumPy arrays (a deep copy)."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: as_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def dense(p, x):
    return x @ p["kernel"] + p.get("bias", 0.0)


def gru(p, x, h, variant="flax"):
    """One step of flax.linen.GRUCell (see the module docstring); `variant` = a wrong GRU."""
    ir, iz = ("iz", "ir") if variant == "swap_rz" else ("ir", "iz")
    hr, hz = ("hz", "hr") if variant == "swap_rz" else ("hr", "hz")
    r = sigmoid(x @ p[ir]["kernel"] + p[ir]["bias"] + h @ p[hr]["kernel"])
    z = sigmoid(x @ p[iz]["kernel"] + p[iz]["bias"] + h @ p[hz]["kernel"])
    if variant == "reset_before":  # the other GRU convention: reset applied before W_hn
        n = np.tanh(x @ p["in"]["kernel"] + p["in"]["bias"] + (r * h) @ p["hn"]["kernel"]
                    + p["hn"]["bias"])
    else:
        n = np.tanh(x @ p["in"]["kernel"] + p["in"]["bias"]
                    + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
    return (1.0 - z) * n + z * h


def random_params(shapes, seed: int):
    """Parameters of the given shapes, all random (biases too, so that a bias in the wrong place
    shows): kernels N(0, 1.5 / fan_in), biases N(0, 0.5)."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if leaf.ndim >= 2:
            std = np.sqrt(1.5 / np.prod(leaf.shape[:-1]))
        else:
            std = 0.5
        return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map(fill, shapes)


def pairs_and_masks():
    pairs = np.zeros((B, M, 2), np.int32)
    pair_mask = np.zeros((B, M), bool)
    for b, real in enumerate(REAL_PAIRS):
        pairs[b, :len(real)] = real
        pair_mask[b, :len(real)] = True
    # Padded pairs point at real boxes (and, in image 1, at padded ones): they must send nothing.
    pairs[0, len(REAL_PAIRS[0]):] = [(1, 2)]
    pairs[1, len(REAL_PAIRS[1]):] = [(2, 0), (3, 4), (1, 2), (4, 0)]
    box_mask = np.arange(O)[None] < np.array(N_BOXES)[:, None]
    return pairs, pair_mask, box_mask


def real_positions(mask_row):
    return [int(i) for i in np.flatnonzero(mask_row)]


def max_diff(got: dict, want: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(got[k], np.float64) - want[k]))) for k in want)


def assert_close(got: dict, want: dict):
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k], np.float64), want[k], err_msg=k, **TOL)


# ==============================================================================================
# IMP


def imp_gate(p, vertex, edge, swap_inputs=False):
    """Xu et al.'s scalar gate sigmoid(w . [h_vertex, h_edge] + b) (the gate module's Dense)."""
    d = p["Dense_0"]
    x = np.concatenate([edge, vertex] if swap_inputs else [vertex, edge])
    return float(sigmoid(x @ d["kernel"][:, 0] + d["bias"][0]))


def imp_reference(params, obj_feats, union_feats, pairs, pair_mask, box_mask, iterations,
                  wrong: str = ""):
    """Real rows of (node states [B, O, H], predicate logits [B, M, P+1], node object logits
    [B, O, C+1]); padded rows are left at zero (never compared)."""
    p = copy.deepcopy(params)
    gru_variant = "flax"
    if wrong == "swap_vertex_gates":
        p["sub_vert_gate"], p["obj_vert_gate"] = p["obj_vert_gate"], p["sub_vert_gate"]
    elif wrong == "swap_edge_gates":
        p["out_edge_gate"], p["in_edge_gate"] = p["in_edge_gate"], p["out_edge_gate"]
    elif wrong in ("swap_rz", "reset_before"):
        gru_variant = wrong
    swap_inputs = wrong == "gate_input_order"
    nodes_out = np.zeros((B, O, H))
    rel_out = np.zeros((B, M, P + 1))
    nobj_out = np.zeros((B, O, C + 1))
    for b in range(B):
        boxes = real_positions(box_mask[b])
        edges_idx = real_positions(pair_mask[b])
        zero = np.zeros(H)
        nodes = {i: gru(p["node_gru"], dense(p["obj_unary"], obj_feats[b, i]), zero, gru_variant)
                 for i in boxes}
        edges = {e: gru(p["edge_gru"], relu(dense(p["edge_unary"], union_feats[b, e])), zero,
                        gru_variant) for e in edges_idx}
        for _ in range(iterations):
            new_edges = {}
            node_msg = {i: np.zeros(H) for i in boxes}
            for e in edges_idx:  # everything from the states at the start of the round
                s, o = int(pairs[b, e, 0]), int(pairs[b, e, 1])
                hs, ho, he = nodes[s], nodes[o], edges[e]
                msg = (imp_gate(p["sub_vert_gate"], hs, he, swap_inputs) * hs
                       + imp_gate(p["obj_vert_gate"], ho, he, swap_inputs) * ho)
                new_edges[e] = gru(p["edge_gru"], msg, he, gru_variant)
                if wrong == "edge_messages_from_new_edges":
                    he = new_edges[e]
                node_msg[s] = node_msg[s] + imp_gate(p["out_edge_gate"], hs, he, swap_inputs) * he
                node_msg[o] = node_msg[o] + imp_gate(p["in_edge_gate"], ho, he, swap_inputs) * he
            nodes = {i: gru(p["node_gru"], node_msg[i], nodes[i], gru_variant) for i in boxes}
            edges = new_edges
        for i in boxes:
            nodes_out[b, i] = nodes[i]
            nobj_out[b, i] = dense(p["obj_classifier"], nodes[i])
        for e in edges_idx:
            rel_out[b, e] = dense(p["rel_classifier"], edges[e])
    return nodes_out, rel_out, nobj_out


def real_rows(arr, mask):
    """Real rows kept, padded rows zeroed (so that reference and model compare on real rows)."""
    return np.where(np.asarray(mask)[..., None], np.asarray(arr, np.float64), 0.0)


@pytest.fixture(scope="module")
def imp_head():
    """A tiny IMP relation head with random weights, random inputs and padding."""
    rng = np.random.default_rng(0)
    pairs, pair_mask, box_mask = pairs_and_masks()
    obj_feats = rng.normal(size=(B, O, F)).astype(np.float32)     # padded rows random too
    union_feats = rng.normal(size=(B, M, F)).astype(np.float32)
    args = tuple(map(jnp.asarray, (obj_feats, union_feats, pairs, pair_mask, box_mask)))
    heads, outputs = {}, {}
    for t in (1, 2):
        head = IMPRelationHead(P, hidden_dim=H, num_iterations=t, num_obj_classes=C)
        shapes = jax.eval_shape(functools.partial(head.init, jax.random.PRNGKey(0)), *args)
        variables = random_params(shapes, seed=1)  # same names and shapes for any t
        nodes, rel, nobj = jax.jit(head.apply)(variables, *args)
        heads[t] = variables
        outputs[t] = dict(nodes=real_rows(nodes, box_mask), rel=real_rows(rel, pair_mask),
                          nobj=real_rows(nobj, box_mask))
    return dict(params=heads, outputs=outputs, obj_feats=obj_feats, union_feats=union_feats,
                pairs=pairs, pair_mask=pair_mask, box_mask=box_mask)


def _imp_ref(d, t, wrong=""):
    nodes, rel, nobj = imp_reference(as_numpy(d["params"][t]["params"]), d["obj_feats"],
                                     d["union_feats"], d["pairs"], d["pair_mask"],
                                     d["box_mask"], t, wrong)
    return dict(nodes=nodes, rel=rel, nobj=nobj)


def test_imp_parameter_names_are_the_ones_the_reference_reads(imp_head):
    p = imp_head["params"][1]["params"]
    assert set(p) == {"obj_unary", "edge_unary", "node_gru", "edge_gru", "sub_vert_gate",
                      "obj_vert_gate", "out_edge_gate", "in_edge_gate", "rel_classifier",
                      "obj_classifier"}
    assert set(p["node_gru"]) == {"ir", "iz", "in", "hr", "hz", "hn"}
    assert set(p["node_gru"]["hr"]) == {"kernel"} and set(p["node_gru"]["hn"]) == {"kernel", "bias"}
    assert p["sub_vert_gate"]["Dense_0"]["kernel"].shape == (2 * H, 1)


def test_numpy_gru_is_flax_grucell():
    """The reference's GRU step equals flax.linen.GRUCell on random weights (the convention
    the references rely on: reset gate applied to W_hn h + b_hn)."""
    import flax.linen as nn

    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, F)).astype(np.float32)
    h = rng.normal(size=(4, H)).astype(np.float32)
    cell = nn.GRUCell(H)
    shapes = jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), jnp.asarray(h),
                                              jnp.asarray(x)))
    variables = random_params(shapes, seed=4)
    got, _ = cell.apply(variables, jnp.asarray(h), jnp.asarray(x))
    want = np.stack([gru(as_numpy(variables["params"]), x[i].astype(np.float64),
                         h[i].astype(np.float64)) for i in range(4)])
    np.testing.assert_allclose(np.asarray(got), want, **TOL)
    wrong = np.stack([gru(as_numpy(variables["params"]), x[i].astype(np.float64),
                          h[i].astype(np.float64), "reset_before") for i in range(4)])
    assert np.max(np.abs(np.asarray(got) - wrong)) > WRONG


@pytest.mark.parametrize("iterations", [1, 2])
def test_imp_head_equals_numpy_reference(imp_head, iterations):
    """Node states, predicate logits and node-state object logits of the real rows."""
    assert_close(imp_head["outputs"][iterations], _imp_ref(imp_head, iterations))


@pytest.mark.parametrize("wrong", ["swap_vertex_gates", "swap_edge_gates", "gate_input_order",
                                   "swap_rz", "reset_before", "edge_messages_from_new_edges"])
def test_imp_reference_with_a_wrong_equation_differs(imp_head, wrong):
    """The comparison above can fail: a reference with one gate or GRU detail changed is far
    from the model."""
    got = imp_head["outputs"][1]
    if wrong == "edge_messages_from_new_edges":  # only visible in the node states
        got = {"nodes": got["nodes"]}
    ref = _imp_ref(imp_head, 1, wrong)
    assert max_diff(got, {k: ref[k] for k in got}) > WRONG, wrong


def imp_model_inputs(seed: int):
    rng = np.random.default_rng(seed)
    pairs, pair_mask, box_mask = pairs_and_masks()
    xy = rng.uniform(0, S - 24, (B, O, 2))
    wh = rng.uniform(8, 24, (B, O, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    return ModelInputs(images=jnp.asarray(rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)),
                       image_sizes=jnp.full((B, 2), S, jnp.int32), boxes=jnp.asarray(boxes),
                       box_mask=jnp.asarray(box_mask),
                       labels=jnp.asarray(np.where(box_mask, 1, 0).astype(np.int32)),
                       pairs=jnp.asarray(pairs), pair_mask=jnp.asarray(pair_mask))


def roi_outputs(intermediates):
    """The outputs of the model's `roi_features` submodule, as capture_intermediates saw them."""
    return intermediates["intermediates"]["roi_features"]["__call__"][0]


def test_imp_model_logits_equal_numpy_reference_on_its_roi_features():
    """The whole IMPModel (Xu et al.'s classifier on the node states, one round): its object and
    predicate logits equal the reference run on the RoI features the model computed."""
    model = IMPModel(num_classes=C, num_predicates=P, mode="sgcls", backbone_name="small_resnet",
                     hidden_dim=H, num_iterations=1, fc_dim=F, roi_size=2, sampling_ratio=1)
    inputs = imp_model_inputs(5)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, False), inputs)
    variables = random_params(shapes, seed=6)
    capture = lambda mdl, method: mdl.name == "roi_features"
    out, inter = jax.jit(lambda v, x: model.apply(v, x, False, capture_intermediates=capture,
                                                  mutable=["intermediates"]))(variables, inputs)
    obj_feats, union_feats = map(lambda a: np.asarray(a, np.float64), roi_outputs(inter))
    params = as_numpy(variables["params"])
    head = dict(params["relation_head"])
    head["obj_classifier"] = params["obj_classifier"]  # Xu et al.: classifier on node states
    pairs, pair_mask, box_mask = map(np.asarray, (inputs.pairs, inputs.pair_mask,
                                                  inputs.box_mask))
    _, rel, obj = imp_reference(head, obj_feats, union_feats, pairs, pair_mask, box_mask, 1)
    got = dict(obj=real_rows(out.obj_logits, box_mask), rel=real_rows(out.rel_logits, pair_mask))
    assert_close(got, dict(obj=obj, rel=rel))
    _, rel_w, obj_w = imp_reference(head, obj_feats, union_feats, pairs, pair_mask, box_mask, 1,
                                    "swap_vertex_gates")
    assert max_diff(got, dict(obj=obj_w, rel=rel_w)) > WRONG


# ==============================================================================================
# MSDN


def msdn_gate(p, target, source, wrong=""):
    """Li et al.'s gate: mean_k sigmoid(W [relu(target), relu(source)] + b)_k, W = [W_t; W_s]."""
    kernel = np.concatenate([p["w_target"]["kernel"], p["w_source"]["kernel"]], axis=0)
    if wrong == "gate_no_relu":
        x = np.concatenate([target, source])
    else:
        x = np.concatenate([relu(target), relu(source)])
    return float(np.mean(sigmoid(x @ kernel + p["w_target"]["bias"])))


def update_unit(p, msg, h):
    """MSDN's residual update h + W_x relu(message) + b_x + W_h relu(h) + b_h."""
    return h + dense(p["w_input"], relu(msg)) + dense(p["w_hidden"], relu(h))


def covers(region, phrase, threshold):
    """area(phrase ∩ region) / area(phrase) > threshold (continuous areas)."""
    iw = max(0.0, min(phrase[2], region[2]) - max(phrase[0], region[0]))
    ih = max(0.0, min(phrase[3], region[3]) - max(phrase[1], region[1]))
    area = max(0.0, phrase[2] - phrase[0]) * max(0.0, phrase[3] - phrase[1])
    return area > 0 and iw * ih / area > threshold


def msdn_links(boxes, pairs, pair_mask, region_boxes, region_mask, threshold=0.8):
    """{(b, m, q)} of linked real phrases and real regions; phrase box = the pair's union box."""
    links = set()
    for b in range(B):
        for m in real_positions(pair_mask[b]):
            s, o = pairs[b, m]
            u = np.r_[np.minimum(boxes[b, s, :2], boxes[b, o, :2]),
                      np.maximum(boxes[b, s, 2:], boxes[b, o, 2:])]
            for q in real_positions(region_mask[b]):
                if covers(region_boxes[b, q], u, threshold):
                    links.add((b, m, q))
    return links


def mean_or_zero(vectors):
    return np.mean(vectors, axis=0) if vectors else np.zeros(H)


def msdn_reference(params, obj_feats, phrase_feats, region_feats, boxes, pairs, pair_mask,
                   box_mask, region_boxes, region_mask, iterations, wrong=""):
    """Real rows of the refined states and of what is read from them."""
    p = copy.deepcopy(params)
    threshold = 0.5 if wrong == "link_threshold_0.5" else 0.8
    swaps = {"swap_object_gates": ("gate_pred2sub", "gate_pred2obj"),
             "swap_phrase_gates": ("gate_sub2pred", "gate_obj2pred"),
             "swap_region_gates": ("gate_reg2pred", "gate_pred2reg")}
    if wrong in swaps:
        a, c = swaps[wrong]
        p[a], p[c] = p[c], p[a]
    agg = (lambda v: np.sum(v, axis=0) if v else np.zeros(H)) if wrong == "sum_not_mean" \
        else mean_or_zero
    g = lambda name, t, s: msdn_gate(p[name], t, s, wrong)
    links = msdn_links(boxes, pairs, pair_mask, region_boxes, region_mask, threshold)
    out = dict(obj=np.zeros((B, O, H)), phr=np.zeros((B, M, H)), reg=np.zeros((B, Q, H)),
               rel=np.zeros((B, M, P + 1)), region_scores=np.zeros((B, Q)),
               region_deltas=np.zeros((B, Q, 4)))
    for b in range(B):
        objs, phrs, regs = (real_positions(box_mask[b]), real_positions(pair_mask[b]),
                            real_positions(region_mask[b]))
        obj = {i: relu(dense(p["obj_proj"], obj_feats[b, i])) for i in objs}
        phr = {m: relu(dense(p["phrase_proj"], phrase_feats[b, m])) for m in phrs}
        reg = {q: relu(dense(p["region_proj"], region_feats[b, q])) for q in regs}
        sub = {m: int(pairs[b, m, 0]) for m in phrs}
        ob = {m: int(pairs[b, m, 1]) for m in phrs}
        for _ in range(iterations):
            obj_msg = {i: 0.5 * (
                agg([g("gate_pred2sub", obj[i], phr[m]) * phr[m] for m in phrs if sub[m] == i])
                + agg([g("gate_pred2obj", obj[i], phr[m]) * phr[m] for m in phrs if ob[m] == i]))
                for i in objs}
            phr_msg = {m: (g("gate_sub2pred", phr[m], obj[sub[m]]) * obj[sub[m]]
                           + g("gate_obj2pred", phr[m], obj[ob[m]]) * obj[ob[m]]
                           + agg([g("gate_reg2pred", phr[m], reg[q]) * reg[q] for q in regs
                                  if (b, m, q) in links])) / 3.0
                       for m in phrs}
            reg_msg = {q: agg([g("gate_pred2reg", reg[q], phr[m]) * phr[m] for m in phrs
                               if (b, m, q) in links]) for q in regs}
            obj = {i: update_unit(p["update_object"], obj_msg[i], obj[i]) for i in objs}
            phr = {m: update_unit(p["update_phrase"], phr_msg[m], phr[m]) for m in phrs}
            reg = {q: update_unit(p["update_region"], reg_msg[q], reg[q]) for q in regs}
        for i in objs:
            out["obj"][b, i] = obj[i]
        for m in phrs:
            out["phr"][b, m] = phr[m]
            out["rel"][b, m] = dense(p["rel_classifier"], phr[m])
        for q in regs:
            out["reg"][b, q] = reg[q]
            out["region_scores"][b, q] = dense(p["region_objectness"], reg[q])[0]
            out["region_deltas"][b, q] = dense(p["region_box"], reg[q])
    return out


def msdn_boxes(seed: int):
    """Object boxes, and caption regions chosen so that the link rule matters: per image a
    region covering the whole canvas (linked to every phrase), the exact union box of a pair
    (covered fraction 1), a region covering ~65% of another pair's union box (linked only at
    thresholds below 0.65), then a far-away small one; padded regions cover everything."""
    rng = np.random.default_rng(seed)
    pairs, pair_mask, box_mask = pairs_and_masks()
    xy = rng.uniform(0, S - 28, (B, O, 2))
    wh = rng.uniform(6, 20, (B, O, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    region_boxes = np.tile(np.array([0, 0, S, S], np.float32), (B, Q, 1))
    region_mask = np.arange(Q)[None] < np.array(N_REGIONS)[:, None]
    for b in range(B):
        def union(m, b=b):
            s, o = pairs[b, m]
            return np.r_[np.minimum(boxes[b, s, :2], boxes[b, o, :2]),
                         np.maximum(boxes[b, s, 2:], boxes[b, o, 2:])]
        u0, u1 = union(0), union(1)
        region_boxes[b, 1] = u0
        if N_REGIONS[b] > 2:
            region_boxes[b, 2] = [u1[0], u1[1], u1[0] + 0.65 * (u1[2] - u1[0]), u1[3]]
            region_boxes[b, 3] = [S - 4, S - 4, S, S]
    return boxes, region_boxes, region_mask, pairs, pair_mask, box_mask


@pytest.fixture(scope="module")
def msdn_head():
    rng = np.random.default_rng(10)
    boxes, region_boxes, region_mask, pairs, pair_mask, box_mask = msdn_boxes(11)
    feats = [rng.normal(size=(B, n, F)).astype(np.float32) for n in (O, M, Q)]
    args = tuple(map(jnp.asarray, feats + [boxes, box_mask, pairs, pair_mask, region_boxes,
                                           region_mask]))
    params, outputs = {}, {}
    for t in (1, 2):
        head = MSDNRefinement(P, hidden_dim=H, num_iterations=t, gate_width=W)
        shapes = jax.eval_shape(functools.partial(head.init, jax.random.PRNGKey(0)), *args)
        variables = random_params(shapes, seed=12)
        obj, phr, reg, rel, scores, deltas = jax.jit(head.apply)(variables, *args)
        params[t] = variables
        outputs[t] = dict(obj=obj, phr=phr, reg=reg, rel=rel, region_scores=scores,
                          region_deltas=deltas)
    return dict(params=params, outputs=outputs, feats=feats, boxes=boxes, pairs=pairs,
                pair_mask=pair_mask, box_mask=box_mask, region_boxes=region_boxes,
                region_mask=region_mask)


def _msdn_ref(d, t, wrong=""):
    return msdn_reference(as_numpy(d["params"][t]["params"]), *d["feats"], d["boxes"], d["pairs"],
                          d["pair_mask"], d["box_mask"], d["region_boxes"], d["region_mask"], t,
                          wrong)


def _msdn_real(d, out):
    masks = dict(obj=d["box_mask"], phr=d["pair_mask"], rel=d["pair_mask"],
                 reg=d["region_mask"], region_deltas=d["region_mask"])
    got = {k: real_rows(out[k], masks[k]) for k in masks}
    got["region_scores"] = np.where(d["region_mask"], np.asarray(out["region_scores"]), 0.0)
    return got


def test_msdn_links_of_the_test_boxes_exercise_the_rule(msdn_head):
    """The region-phrase graph of the test data is neither empty nor complete, and the 0.8
    threshold matters (the reference's links differ at 0.5)."""
    d = msdn_head
    args = (d["boxes"], d["pairs"], d["pair_mask"], d["region_boxes"], d["region_mask"])
    links = msdn_links(*args)
    n_real = sum(len(real_positions(d["pair_mask"][b])) * len(real_positions(d["region_mask"][b]))
                 for b in range(B))
    assert 0 < len(links) < n_real
    assert links < msdn_links(*args, threshold=0.5)
    assert {(b, 0, 0) for b in range(B)} | {(b, 0, 1) for b in range(B)} <= links


@pytest.mark.parametrize("iterations", [1, 2])
def test_msdn_refinement_equals_numpy_reference(msdn_head, iterations):
    """Refined object, phrase and region states and the predicate logits, region objectness
    and region deltas read from them, on the real rows; padded rows of the states are zero."""
    out = msdn_head["outputs"][iterations]
    assert_close(_msdn_real(msdn_head, out), _msdn_ref(msdn_head, iterations))
    for k, mask in (("obj", "box_mask"), ("phr", "pair_mask"), ("reg", "region_mask")):
        assert not np.asarray(out[k])[~msdn_head[mask]].any(), k


@pytest.mark.parametrize("wrong", ["swap_object_gates", "swap_phrase_gates", "swap_region_gates",
                                   "gate_no_relu", "link_threshold_0.5", "sum_not_mean"])
def test_msdn_reference_with_a_wrong_equation_differs(msdn_head, wrong):
    # The first round's states are relu(projections) >= 0, so the gates' relu shows only from
    # the second round on.
    t = 2 if wrong == "gate_no_relu" else 1
    got = _msdn_real(msdn_head, msdn_head["outputs"][t])
    assert max_diff(got, _msdn_ref(msdn_head, t, wrong)) > WRONG, wrong


def test_msdn_model_outputs_equal_numpy_reference_on_its_roi_features():
    """The whole MSDNModel (one round): object logits, predicate logits, region objectness and
    region deltas equal the reference run on the three branches' RoI features it computed."""
    boxes, region_boxes, region_mask, pairs, pair_mask, box_mask = msdn_boxes(13)
    rng = np.random.default_rng(14)
    tokens = np.zeros((B, Q, 4), np.int32)
    tokens[..., :3] = [1, 5, 2]  # <start> word <end>: teacher forcing, no decoding to compile
    inputs = ModelInputs(
        images=jnp.asarray(rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)),
        image_sizes=jnp.full((B, 2), S, jnp.int32), boxes=jnp.asarray(boxes),
        box_mask=jnp.asarray(box_mask), labels=jnp.asarray(np.where(box_mask, 1, 0), jnp.int32),
        pairs=jnp.asarray(pairs), pair_mask=jnp.asarray(pair_mask),
        region_boxes=jnp.asarray(region_boxes), region_tokens=jnp.asarray(tokens),
        region_mask=jnp.asarray(region_mask))
    model = MSDNModel(num_classes=C, num_predicates=P, vocab_size=8, mode="sgcls",
                      backbone_name="small_resnet", hidden_dim=H, num_iterations=1,
                      gate_width=W, fc_dim=F, roi_size=2, sampling_ratio=1)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, True), inputs)
    variables = random_params(shapes, seed=15)
    capture = lambda mdl, method: mdl.name == "roi_features"
    out, inter = jax.jit(lambda v, x: model.apply(v, x, True, capture_intermediates=capture,
                                                  mutable=["intermediates"]))(variables, inputs)
    obj_f, phr_f, reg_f = (np.asarray(a, np.float64) for a in roi_outputs(inter)[:3])
    params = as_numpy(variables["params"])
    ref = msdn_reference(params["relation_head"], obj_f, phr_f, reg_f, boxes, pairs, pair_mask,
                         box_mask, region_boxes, region_mask, 1)
    obj_logits = np.stack([[dense(params["obj_classifier"], ref["obj"][b, i]) for i in range(O)]
                           for b in range(B)])
    got = dict(obj=real_rows(out.obj_logits, box_mask), rel=real_rows(out.rel_logits, pair_mask),
               region_scores=np.where(region_mask, np.asarray(out.aux["region_scores"]), 0.0),
               region_deltas=real_rows(out.aux["region_deltas"], region_mask))
    want = dict(obj=real_rows(obj_logits, box_mask), rel=ref["rel"],
                region_scores=ref["region_scores"], region_deltas=ref["region_deltas"])
    assert_close(got, want)
    wrong = msdn_reference(params["relation_head"], obj_f, phr_f, reg_f, boxes, pairs, pair_mask,
                           box_mask, region_boxes, region_mask, 1, "swap_phrase_gates")
    assert max_diff(got, {k: wrong[k] for k in ("rel", "region_scores")}) > WRONG
