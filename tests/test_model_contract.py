"""The contract every registered model passes, in every mode (tiny shapes, random weights):

- padding invariance: garbage in padded boxes, labels, pairs and regions changes no output of
  the real ones;
- permutation equivariance: permuting the objects (pairs remapped) or the pairs permutes the
  outputs accordingly, to float tolerance;
- no ground-truth labels in SGCls: changing `labels` changes nothing at test time (in SGDet
  `labels` carries the detector's labels, which a model may read, e.g. FREQ);
- one compilation for two batches of the same shape; every parameter belongs to a group the
  model's spec declares.

Outputs are compared by their axes: `obj_logits`, `obj_labels`, `obj_scores` and aux arrays
whose second axis is O are per object; `rel_logits` and aux arrays with M there are per pair;
other aux arrays (e.g. caption regions) must not change at all. O, M and Q differ, so the axes
are unambiguous. A model added to the registry is tested here with no new test code.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.models import ModelInputs, registry
from training_utils import load_config, make_facts, random_variables

B, S, O, M, Q, L = 2, 64, 5, 7, 4, 6
N_BOXES, N_PAIRS, N_REGIONS = (5, 3), (7, 4), (3, 2)
C, P, V = 4, 3, 12
MODES = ("predcls", "sgcls", "sgdet")
TOL = dict(rtol=2e-4, atol=2e-4)


def model_config(name):
    """The tiny preset's model section of the model's own config file (a model without one, e.g.
    registered by a test, gets the IMP file's common fields)."""
    try:
        return load_config(name, "tiny").model
    except FileNotFoundError:
        cfg = load_config("imp", "tiny").model
        with cfg.unlocked():
            cfg.name = name
        return cfg


def facts():
    fg = np.random.default_rng(0).integers(0, 5, (C + 1, C + 1, P + 1))
    return make_facts(C, P, fg_matrix=fg, bg_matrix=np.ones((C + 1, C + 1)), num_words=V)


def random_boxes(rng, shape):
    xy = rng.uniform(0, 36, shape + (2,))
    return np.concatenate([xy, xy + rng.uniform(8, 24, shape + (2,))], -1).astype(np.float32)


def make_inputs(seed=0) -> ModelInputs:
    rng = np.random.default_rng(seed)
    box_mask = np.arange(O)[None] < np.array(N_BOXES)[:, None]
    pair_mask = np.arange(M)[None] < np.array(N_PAIRS)[:, None]
    region_mask = np.arange(Q)[None] < np.array(N_REGIONS)[:, None]
    pairs = np.zeros((B, M, 2), np.int32)
    tokens = np.zeros((B, Q, L), np.int32)
    for b in range(B):
        cand = [(i, j) for i in range(N_BOXES[b]) for j in range(N_BOXES[b]) if i != j]
        pairs[b, :N_PAIRS[b]] = np.array(cand)[rng.choice(len(cand), N_PAIRS[b], replace=False)]
        for q in range(N_REGIONS[b]):
            tokens[b, q, :4] = [1, rng.integers(4, V), rng.integers(4, V), 2]
    dists = rng.dirichlet(np.ones(C + 1), (B, O)).astype(np.float32)
    labels = np.where(box_mask, rng.integers(1, C + 1, (B, O)), 0).astype(np.int32)
    return ModelInputs(
        images=jnp.asarray(rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)),
        image_sizes=jnp.full((B, 2), S, jnp.int32), boxes=jnp.asarray(random_boxes(rng, (B, O))),
        box_mask=jnp.asarray(box_mask), labels=jnp.asarray(labels), pairs=jnp.asarray(pairs),
        pair_mask=jnp.asarray(pair_mask), region_boxes=jnp.asarray(random_boxes(rng, (B, Q))),
        region_tokens=jnp.asarray(tokens), region_mask=jnp.asarray(region_mask),
        obj_dists=jnp.asarray(np.where(box_mask[..., None], dists, 0.0)))


# Every built-in model (models of one's own run the same checks by calling `make_case` and the
# test functions, as tests/toy/test_toy_model.py does).
CASES = [(name, mode) for name in sorted(registry.BUILTIN_MODULES) for mode in MODES]


def make_case(spec: registry.ModelSpec, mode: str, config=None):
    """(spec, mode, variables, inputs, apply, traces) of a model: `apply` is the jitted forward
    pass at test time; `traces` counts its compilations."""
    config = config if config is not None else model_config(spec.name)
    known = facts()
    model = spec.build(config, registry.BuildContext(
        mode=mode, facts=known, build_model=lambda cfg, m: registry.build_model(cfg, known, m)))
    inputs = make_inputs()
    variables = random_variables(model, inputs, seed=1)
    traces = []

    def forward(v, x):
        traces.append(1)
        return model.apply(v, x, False)

    return spec, mode, variables, inputs, jax.jit(forward), traces


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{m}" for n, m in CASES])
def case(request):
    name, mode = request.param
    return make_case(registry.get_spec(name), mode)


def outputs(out) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (axis kind, array)} of a ModelOutputs (module docstring)."""
    out_d = {"obj_logits": ("object", out.obj_logits), "rel_logits": ("pair", out.rel_logits)}
    for key in ("obj_labels", "obj_scores"):
        if getattr(out, key) is not None:
            out_d[key] = ("object", getattr(out, key))
    for key, value in out.aux.items():
        kind = {O: "object", M: "pair"}.get(value.shape[1], "global")
        out_d[f"aux.{key}"] = (kind, value)
    return {k: (kind, np.asarray(v)) for k, (kind, v) in out_d.items()}


def assert_same(a, b, name, exact_ints=True):
    if np.issubdtype(a.dtype, np.integer) and exact_ints:
        np.testing.assert_array_equal(a, b, err_msg=name)
    else:
        np.testing.assert_allclose(a, b, err_msg=name, **TOL)


def test_parameters_belong_to_declared_groups(case):
    spec, _, variables, _, _, _ = case
    params = variables.get("params", {})  # the detector-only "model" has none
    assert set(params) <= set(spec.param_groups), sorted(set(params) - set(spec.param_groups))


def test_padding_is_invariant(case):
    _, mode, variables, inputs, apply, _ = case
    base = outputs(apply(variables, inputs))
    rng = np.random.default_rng(7)
    bm, pm, rm = (np.asarray(m) for m in (inputs.box_mask, inputs.pair_mask, inputs.region_mask))
    boxes = np.where(bm[..., None], inputs.boxes, random_boxes(rng, (B, O)))
    labels = np.where(bm, inputs.labels, rng.integers(1, C + 1, (B, O)))
    pairs = np.where(pm[..., None], inputs.pairs, rng.integers(0, O, (B, M, 2)))
    regions = np.where(rm[..., None], inputs.region_boxes, random_boxes(rng, (B, Q)))
    dists = np.where(bm[..., None], inputs.obj_dists, rng.dirichlet(np.ones(C + 1), (B, O)))
    noisy = inputs.replace(boxes=jnp.asarray(boxes), labels=jnp.asarray(labels, jnp.int32),
                           pairs=jnp.asarray(pairs, jnp.int32), region_boxes=jnp.asarray(regions),
                           obj_dists=jnp.asarray(dists, jnp.float32))
    got = outputs(apply(variables, noisy))
    for name, (kind, value) in base.items():
        mask = {"object": bm, "pair": pm}.get(kind)
        if mask is None:
            assert_same(got[name][1], value, name)
        else:
            assert_same(got[name][1][mask], value[mask], name)


def _permute_objects(inputs, perm):
    """Objects reordered by perm [B, O] (new slot k holds old object perm[b, k]), real ones
    first; pairs renumbered."""
    inv = np.argsort(perm, axis=1)
    take = lambda x: np.take_along_axis(np.asarray(x), perm.reshape(perm.shape + (1,) * (
        np.ndim(x) - 2)), axis=1)
    pairs = np.stack([np.take_along_axis(inv, np.asarray(inputs.pairs)[..., k], 1)
                      for k in (0, 1)], -1)
    pairs = np.where(np.asarray(inputs.pair_mask)[..., None], pairs, 0)
    return inputs.replace(boxes=jnp.asarray(take(inputs.boxes)),
                          box_mask=jnp.asarray(take(inputs.box_mask)),
                          labels=jnp.asarray(take(inputs.labels)),
                          obj_dists=jnp.asarray(take(inputs.obj_dists)),
                          pairs=jnp.asarray(pairs, jnp.int32))


def test_permuting_objects_permutes_outputs(case):
    _, _, variables, inputs, apply, _ = case
    base = outputs(apply(variables, inputs))
    rng = np.random.default_rng(3)
    perm = np.stack([np.r_[rng.permutation(n), np.arange(n, O)] for n in N_BOXES])
    got = outputs(apply(variables, _permute_objects(inputs, perm)))
    for name, (kind, value) in base.items():
        if kind == "object":
            for b, n in enumerate(N_BOXES):
                assert_same(got[name][1][b, :n], value[b, perm[b, :n]], name)
        elif kind == "pair":
            pm = np.asarray(inputs.pair_mask)
            assert_same(got[name][1][pm], value[pm], name)
        else:
            assert_same(got[name][1], value, name)


def test_permuting_pairs_permutes_outputs(case):
    _, _, variables, inputs, apply, _ = case
    base = outputs(apply(variables, inputs))
    rng = np.random.default_rng(4)
    perm = np.stack([np.r_[rng.permutation(n), np.arange(n, M)] for n in N_PAIRS])
    take = lambda x: jnp.asarray(np.take_along_axis(
        np.asarray(x), perm.reshape(perm.shape + (1,) * (np.ndim(x) - 2)), axis=1))
    got = outputs(apply(variables, inputs.replace(pairs=take(inputs.pairs),
                                                  pair_mask=take(inputs.pair_mask))))
    for name, (kind, value) in base.items():
        if kind == "pair":
            for b, n in enumerate(N_PAIRS):
                assert_same(got[name][1][b, :n], value[b, perm[b, :n]], name)
        elif kind == "object":
            assert_same(got[name][1][np.asarray(inputs.box_mask)],
                        value[np.asarray(inputs.box_mask)], name)
        else:
            assert_same(got[name][1], value, name)


def test_sgcls_reads_no_labels_and_compiles_once(case):
    _, mode, variables, inputs, apply, traces = case
    base = outputs(apply(variables, inputs))
    other = np.random.default_rng(9).integers(1, C + 1, (B, O)).astype(np.int32)
    got = outputs(apply(variables, inputs.replace(labels=jnp.asarray(other))))
    assert len(traces) == 1  # every call of this module's tests had the same shapes
    if mode != "sgcls":
        return
    for name, (_, value) in base.items():
        assert_same(got[name][1], value, name)
