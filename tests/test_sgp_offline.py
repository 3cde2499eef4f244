"""SGP from saved predictions (sgg_jax/sgp_offline.py): for the same base outputs and GPI
parameters the offline path refines exactly as the online model; the CLI trains and
evaluates on files alone; files without logits or from another dataset are refused."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax import relation_sampling, sgp_offline
from sgg_jax.evaluation.prediction_file import write_predictions
from sgg_jax.models import registry
from test_model_contract import C, P, facts, make_inputs
from training_utils import load_config, random_variables


def _write(path, preds, gts, **meta):
    write_predictions(path, list(range(len(preds))), preds, gts, metadata=dict(
        mode="sgcls", num_classes=C, num_predicates=P, max_objects=5,
        idx_to_label=["bg"] + [f"c{i}" for i in range(C)],
        idx_to_predicate=["none"] + [f"p{i}" for i in range(P)], **meta))


def test_offline_refinement_equals_the_online_model_for_the_same_base_outputs(tmp_path):
    config = load_config("sgp", "tiny")  # an IMP base: message passing over the given pairs
    known = facts()
    ctx = registry.BuildContext(mode="sgcls", facts=known,
                                build_model=lambda cfg, m: registry.build_model(cfg, known, m))
    model = registry.get_spec("sgp").build(config.model, ctx)
    inputs = make_inputs()
    o = inputs.boxes.shape[1]
    pairs, pair_mask = relation_sampling.all_pairs(inputs.box_mask, o * (o - 1))
    inputs = inputs.replace(pairs=pairs, pair_mask=pair_mask)
    variables = random_variables(model, inputs, seed=2)
    online = jax.jit(lambda v, x: model.apply(v, x, False))(variables, inputs)
    base = jax.jit(lambda v, x: model.base.apply(v, x, False))(
        {"params": variables["params"]["base"]}, inputs)
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for b in range(inputs.boxes.shape[0]):
        n = int(inputs.box_mask[b].sum())
        pm = np.asarray(pair_mask[b])
        boxes = np.asarray(inputs.boxes[b][:n])
        preds.append(dict(boxes=boxes, labels=np.ones(n), scores=np.full(n, 0.5),
                          rel_pairs=np.asarray(pairs[b][pm]),
                          rel_scores=np.full((pm.sum(), P + 1), 1 / (P + 1)),
                          obj_logits=np.asarray(base.obj_logits[b][:n]),
                          rel_logits=np.asarray(base.rel_logits[b][pm]),
                          image_size=np.asarray(inputs.image_sizes[b])))
        gts.append(dict(boxes=boxes, labels=np.asarray(inputs.labels[b][:n]),
                        relations=np.array([[0, 1, int(rng.integers(1, P + 1))]])))
    path = tmp_path / "base_sgcls.h5"
    _write(path, preds, gts)
    split = sgp_offline.load_saved(str(path))
    batch = sgp_offline.make_batch(split, [0, 1], 4)
    gpi = sgp_offline.build_gpi(config)
    obj, dense = sgp_offline.refine(gpi, variables["params"]["gpi"], batch, "sgcls")
    mask = np.asarray(inputs.box_mask)
    np.testing.assert_allclose(np.asarray(obj)[mask], np.asarray(online.obj_logits)[mask],
                               atol=1e-5)
    bi = np.arange(2)[:, None]
    offline_rel = np.asarray(dense)[bi, np.asarray(pairs[..., 0]), np.asarray(pairs[..., 1])]
    pm = np.asarray(pair_mask)
    np.testing.assert_allclose(offline_rel[pm], np.asarray(online.rel_logits)[pm], atol=1e-5)
    # GPI did change the base's outputs (the comparison is not base == base)
    assert np.abs(np.asarray(online.rel_logits)[pm] - np.asarray(base.rel_logits)[pm]).max() > 1e-2


def _random_file(path, images=6, seed=0, **meta):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(images):
        n = int(rng.integers(2, 7))  # some beyond max_objects = 5
        xy = rng.uniform(0, 40, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (n, 2))], -1)
        s = min(n, 5)
        pairs = np.array([(i, j) for i in range(s) for j in range(s) if i != j])
        rel = np.array([[0, 1, rng.integers(1, P + 1)], [1, 0, rng.integers(1, P + 1)]])
        preds.append(dict(boxes=boxes, labels=np.ones(n), scores=np.ones(n),
                          rel_pairs=pairs, rel_scores=np.full((len(pairs), P + 1), 0.25),
                          obj_logits=rng.normal(0, 1, (n, C + 1)),
                          rel_logits=rng.normal(0, 1, (len(pairs), P + 1)),
                          image_size=np.array([64, 64])))
        gts.append(dict(boxes=boxes, labels=rng.integers(1, C + 1, n), relations=rel))
    _write(path, preds, gts, **meta)
    return str(path)


def test_the_cli_trains_and_evaluates_from_files_alone(tmp_path, capsys):
    train = _random_file(tmp_path / "train.h5", seed=1)
    test = _random_file(tmp_path / "test.h5", images=3, seed=2)
    out = tmp_path / "run"
    rc = sgp_offline.main(["--config", "configs/sgp.py:tiny", "--train", train, "--test", test,
                           "--workdir", str(out), "--config.train.stages.sgp.num_steps=3",
                           "--config.model.iterations=1",
                           "--config.input.batch_size=2"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["sgcls"]["R@50"] <= 100 and "mR@50" in results["sgcls"]
    assert results["sgp_offline"]["mode"] == "sgcls"
    assert (out / "gpi_params.msgpack").stat().st_size > 0
    assert "R@50" in capsys.readouterr().out


def test_files_without_logits_or_from_another_dataset_are_refused(tmp_path, capsys):
    train = _random_file(tmp_path / "train.h5", seed=1)
    plain = tmp_path / "plain.h5"
    write_predictions(plain, [0], [dict(boxes=np.array([[0, 0, 5, 5.]]), labels=[1], scores=[1.],
                                        rel_pairs=np.zeros((0, 2)),
                                        rel_scores=np.zeros((0, P + 1)))],
                      [dict(boxes=np.array([[0, 0, 5, 5.]]), labels=[1],
                            relations=np.zeros((0, 3)))],
                      metadata=dict(mode="sgcls", num_classes=C, num_predicates=P,
                                    max_objects=5))
    assert sgp_offline.main(["--train", train, "--test", str(plain), "--workdir",
                             str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert str(plain) in err and "save_logits=True" in err
    other = _random_file(tmp_path / "other.h5", images=2, seed=3, dataset="vrd")
    with pytest.raises(ValueError, match=r"other\.h5: field 'metadata': does not fit the training file: "
                                         r"dataset None in .*train\.h5, 'vrd' here"):
        sgp_offline.check_compatible(sgp_offline.load_saved(train),
                                     sgp_offline.load_saved(other))
    # a different class list
    split = sgp_offline.load_saved(other)
    split.metadata.pop("dataset")
    split.metadata = {**split.metadata, "idx_to_label": ["bg", "x"]}
    with pytest.raises(ValueError, match=r"idx_to_label .* in .*train\.h5"):
        sgp_offline.check_compatible(sgp_offline.load_saved(train), split)


def test_a_run_saved_before_an_eval_field_existed_takes_its_default(tmp_path):
    """Runs saved before `eval.save_logits` existed can still be evaluated with it."""
    from sgg_jax.training import runs

    saved = json.loads(load_config("imp", "tiny").to_json())
    del saved["eval"]["save_logits"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = runs.load_run_config(str(tmp_path))
    assert config.eval.save_logits is False
    runs.set_field(config, "eval.save_logits", True)  # the override the eval CLI applies
    assert runs.add_new_eval_fields(config) == []
