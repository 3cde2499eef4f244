"""SGP: GPI's exact permutation equivariance (and a broken variant that fails it), masks, the
features by hand, and `model.base_run` (the base's config and parameters from its run)."""
from __future__ import annotations

import json
import os

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.models import sgp
from training_utils import load_config, random_variables

B, O, C1, P1 = 2, 6, 5, 4
REAL = (6, 4)


def _gpi_inputs(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.arange(O)[None] < np.array(REAL)[:, None]
    xy = rng.uniform(0, 60, (B, O, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 30, (B, O, 2))], -1)
    return dict(obj_logits=jnp.asarray(rng.normal(0, 2, (B, O, C1)), jnp.float32),
                rel_logits=jnp.asarray(rng.normal(0, 2, (B, O, O, P1)), jnp.float32),
                boxes=jnp.asarray(boxes, jnp.float32), mask=jnp.asarray(mask),
                image_sizes=jnp.full((B, 2), 96, jnp.int32))


class _Packed(nn.Module):
    """GPI called as `model(inputs, train)`, the form training_utils.random_variables takes."""

    gpi: sgp.GPI

    def __call__(self, x, train=False):
        return self.gpi(x["obj_logits"], x["rel_logits"], x["boxes"], x["mask"],
                        x["image_sizes"], train)


def _variables(module, x, seed=3):
    return random_variables(_Packed(module), x, seed=seed)


def _run(module, variables, x):
    return jax.jit(_Packed(module).apply)(variables, x)


def _permuted(x, perm):
    return dict(obj_logits=x["obj_logits"][:, perm], rel_logits=x["rel_logits"][:, perm][:, :, perm],
                boxes=x["boxes"][:, perm], mask=x["mask"][:, perm], image_sizes=x["image_sizes"])


def _max_permutation_error(order_dependent: bool) -> float:
    module = sgp.GPI(hidden=16, embed_dim=4, iterations=3, order_dependent=order_dependent)
    x = _gpi_inputs()
    variables = _variables(module, x)
    obj, rel = _run(module, variables, x)
    perm = np.random.default_rng(1).permutation(O)  # real and padded slots mixed
    obj_p, rel_p = _run(module, variables, _permuted(x, perm))
    m = np.asarray(x["mask"])[:, perm]
    pm = m[:, :, None] & m[:, None, :]
    want_obj, want_rel = np.asarray(obj)[:, perm], np.asarray(rel)[:, perm][:, :, perm]
    assert np.all(np.isfinite(obj_p)) and np.all(np.isfinite(rel_p))
    return max(np.abs(np.asarray(obj_p) - want_obj)[m].max(),
               np.abs(np.asarray(rel_p) - want_rel)[pm].max())


def test_permuting_the_objects_permutes_every_output_exactly():
    assert _max_permutation_error(order_dependent=False) < 1e-5


def test_an_order_dependent_variant_fails_the_same_check():
    """SGP's released box features include each object's slot index (arange); with it back the
    outputs no longer follow the permutation."""
    assert _max_permutation_error(order_dependent=True) > 1e-3


def test_padded_objects_take_no_part_and_come_out_unchanged():
    module = sgp.GPI(hidden=16, embed_dim=4, iterations=2)
    x = _gpi_inputs()
    variables = _variables(module, x)
    obj, rel = _run(module, variables, x)
    pad = ~np.asarray(x["mask"])
    junk = dict(x)
    rng = np.random.default_rng(7)
    junk["obj_logits"] = jnp.where(pad[..., None], rng.normal(0, 50, (B, O, C1)), x["obj_logits"])
    junk["boxes"] = jnp.where(pad[..., None], rng.uniform(-500, 500, (B, O, 4)), x["boxes"])
    pair_pad = pad[:, :, None] | pad[:, None, :]
    junk["rel_logits"] = jnp.where(pair_pad[..., None], rng.normal(0, 50, (B, O, O, P1)),
                                   x["rel_logits"])
    obj2, rel2 = _run(module, variables, junk)
    real = ~pad
    np.testing.assert_allclose(np.asarray(obj2)[real], np.asarray(obj)[real], atol=1e-5)
    both = real[:, :, None] & real[:, None, :]
    np.testing.assert_allclose(np.asarray(rel2)[both], np.asarray(rel)[both], atol=1e-5)
    # padded slots pass through untouched
    np.testing.assert_array_equal(np.asarray(obj2)[pad], np.asarray(junk["obj_logits"])[pad])


def test_at_initialisation_the_refined_logits_are_the_base_s():
    """Zero-initialised corrections and 2*sigmoid(0) gates: GPI starts as the identity."""
    module = sgp.GPI(hidden=16, embed_dim=4, iterations=2)
    x = _gpi_inputs()
    variables = jax.jit(_Packed(module).init)(jax.random.key(0), x)
    obj, rel = _run(module, variables, x)
    np.testing.assert_allclose(obj, x["obj_logits"], atol=1e-6)
    np.testing.assert_allclose(rel, x["rel_logits"], atol=1e-6)


def test_features_by_hand():
    boxes = jnp.asarray([[[0, 0, 10, 10], [20, 0, 40, 10], [5, 5, 6, 6], [0, 0, 0, 0]]],
                        jnp.float32)
    mask = jnp.asarray([[True, True, True, False]])
    conf = jnp.asarray([[0.5, 0.9, 0.1, 0.99]])
    f = np.asarray(sgp.box_features(boxes, mask, jnp.asarray([[20, 40]]), conf))[0]
    np.testing.assert_allclose(f[1, :4], [20 / 40, 0, 40 / 40, 10 / 20])
    # ranks among the 3 real objects, / (3 - 1): centre x 5, 30, 5.5; centre y 5, 5, 5.5;
    # area 100, 200, 1; confidence .5, .9, .1 (the padded .99 does not count)
    np.testing.assert_allclose(f[:3, 4], [0, 1, 0.5])
    np.testing.assert_allclose(f[:3, 5], [0, 0, 1])
    np.testing.assert_allclose(f[:3, 6], [0.5, 1, 0])
    np.testing.assert_allclose(f[:3, 7], [0.5, 1, 0])
    g = np.asarray(sgp.pair_geometry(boxes))[0]
    # subject 0 (10x10 at 5,5), object 1 (20x10 at 30,5): offset (25/10, 0), log(2), log(1), IoU 0
    np.testing.assert_allclose(g[0, 1], [2.5, 0, np.log(2), 0, 0], atol=1e-6)
    np.testing.assert_allclose(g[0, 2, 4], 1 / 100)  # box 2 inside box 0
    assert np.all(np.isfinite(g))  # the zero-size padded box is clipped


# ----------------------------------------------------------------------------------------------
# model.base_run


def _base_run(tmp_path, name="motifs", **changes):
    config = load_config(name, "tiny")
    saved = json.loads(config.to_json())
    for key, value in changes.items():
        sec, field = key.split(".")
        saved[sec][field] = value
    run = tmp_path / f"{name}_run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(saved))
    return str(run), saved


def test_base_run_gives_the_base_its_config_and_parameters_and_skips_its_stages(tmp_path):
    from sgg_jax.training import experiment

    run, saved = _base_run(tmp_path, **{"model.hidden_dim": 24})
    config = load_config("sgp", "motifs,tiny", **{"model.base_run": run})
    experiment.complete_config(config)
    assert config.model.bases.motifs.hidden_dim == 24
    stage = config.train.stages.sgp
    assert (stage.restore_from, stage.restore_into) == (run, "base")
    assert config.train.stage_order == "detector,sgp"
    assert stage.trainable == "gpi"
    spec = experiment.validate(config, training=False)
    assert [p.name for p in experiment.plan_stages(config, spec)] == ["sgp"]
    config = load_config("sgp", "motifs,tiny", **{"model.base_run": run,
                                                  "model.train_base": True})
    experiment.complete_config(config)
    assert config.train.stages.sgp.trainable == "gpi,base"


def test_an_msdn_base_brings_its_regions_stage_or_loads_it_from_its_run(tmp_path):
    """MSDN's SGDet reads its region RPN: under SGP the `regions` stage joins the order after
    the detector (without SGDet it is not planned); with a base run it trains nothing and
    loads the network from that run."""
    from sgg_jax.training import experiment

    config = load_config("sgp", "msdn,tiny", **{"eval.modes": "sgcls,sgdet"})
    experiment.complete_config(config)
    assert config.train.stage_order == "detector,regions,objects,relations,sgp"
    assert [(p.name, p.kind) for p in experiment.plan_stages(config)][:2] == [
        ("detector", "detector"), ("regions", "regions")]
    no_sgdet = load_config("sgp", "msdn,tiny", **{"eval.modes": "sgcls"})
    experiment.complete_config(no_sgdet)
    assert [p.name for p in experiment.plan_stages(no_sgdet)] == ["objects", "relations", "sgp"]
    run, _ = _base_run(tmp_path, "msdn")
    config = load_config("sgp", "msdn,tiny", **{"eval.modes": "sgcls,sgdet",
                                                "model.base_run": run})
    experiment.complete_config(config)
    regions = config.train.stages.regions
    assert config.train.stage_order == "detector,regions,sgp"
    assert (regions.num_steps, regions.restore_from, regions.restore_into,
            regions.restore_groups) == (0, run, "", "region_rpn")
    experiment.validate(config, training=False)


@pytest.mark.parametrize("case, needle", [
    ("other_model", "is a run of model 'imp', not of config.model.base='motifs'"),
    ("other_data", "data.num_train 40 there, 48 here"),
    ("missing", "cannot read the base run's model config"),
    ("unknown_base", "config.model.base='nope': expected one of freq, imp, kern, motifs, msdn"),
])
def test_a_wrong_base_run_is_refused_naming_the_file_and_what_differs(tmp_path, case, needle):
    from sgg_jax.training import experiment

    overrides = {}
    if case == "other_model":
        run, _ = _base_run(tmp_path, "imp")
    elif case == "other_data":
        run, _ = _base_run(tmp_path, **{"data.num_train": 40})
    elif case == "missing":
        run = str(tmp_path / "nowhere")
    else:
        run, overrides = "", {"model.base": "nope"}
    config = load_config("sgp", "motifs,tiny", **{"model.base_run": run, **overrides})
    with pytest.raises(ValueError) as e:
        experiment.complete_config(config)
    assert needle in str(e.value)
    if case != "unknown_base":
        assert os.path.join(run, "config.json") in str(e.value) or case == "other_data"
