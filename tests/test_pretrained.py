"""Pretrained weights by config (sgg_jax/training/pretrained.py): the `vg` preset's requirement,
field / file checks, and exact imports of torchvision- and neural-motifs-named files into the
relation model's backbone and the run's detector (round trips through export_state_dict)."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax import weights as W
from sgg_jax.models import detector_config
from sgg_jax.models.backbone import build_backbone
from sgg_jax.models.detection import FasterRCNN
from sgg_jax.training import pretrained as P
from training_utils import flat_params, load_config

NUM_CLASSES = 5
SIZE = 64  # canvas of the shape-only initialisations (no compilation: jax.eval_shape)


def random_like(tree, seed: int):
    """Random float32 arrays with the shapes of `tree` (variances positive: batch-norm var)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (np.abs if len(s.shape) == 1 else np.asarray)(
        rng.standard_normal(s.shape, dtype=np.float32)), tree)


def relation_variables(backbone: str, seed: int):
    """(params, model_state) of a relation model with `backbone` and two other groups."""
    shapes = jax.eval_shape(lambda: build_backbone(backbone, jnp.float32).init(
        jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8)))
    v = random_like(dict(shapes), seed)
    rng = np.random.default_rng(seed + 1)
    params = {"backbone": v["params"],
              "roi_features": {"obj_fc": {"kernel": rng.standard_normal((8, 4), dtype=np.float32)}},
              "obj_classifier": {"bias": rng.standard_normal((NUM_CLASSES + 1,), dtype=np.float32)}}
    state = {k: {"backbone": c} for k, c in v.items() if k != "params"}
    return params, state


def detector_shapes(config, num_classes: int = NUM_CLASSES) -> dict:
    """The shapes of the run's detector variables (jax.eval_shape: nothing compiles)."""
    model = FasterRCNN(detector_config(config.model.detector, num_classes))
    return dict(jax.eval_shape(lambda: model.init(
        {"params": jax.random.key(0), "sampling": jax.random.key(1), "dropout": jax.random.key(2)},
        jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8), jnp.full((1, 2), SIZE, jnp.int32))))


def detector_variables(config, seed: int):
    """The run's detector variables for `config` (random values)."""
    return random_like(detector_shapes(config), seed)


def run_variables(config, seed: int):
    """(params, model_state, detector_state) as trainer.init_params returns them."""
    params, state = relation_variables(config.model.backbone, seed)
    det = detector_variables(config, seed + 2)
    params["detector"] = det["params"]
    return params, state, {k: v for k, v in det.items() if k != "params"}


def nm_state_dict(det: dict) -> dict:
    """Our vgg16 detector under neural-motifs' names: features.N, roi_fmap.0 / .3, score_fc,
    bbox_fc, rpn_head.conv.0 and rpn_head.conv.2 (per anchor [bg, fg, 4 deltas], bg = 0, so
    that its fg - bg objectness is exactly our logit)."""
    rules = (W.vgg16_rules(("backbone",), "features", ("roi_head",), "roi_fmap")
             + W.dense_rules(("roi_head", "cls_score"), "score_fc")
             + W.dense_rules(("roi_head", "bbox_pred"), "bbox_fc")
             + W.conv_rules(("rpn", "conv"), "rpn_head.conv.0"))
    sd = W.export_state_dict(det, rules)
    rpn = det["params"]["rpn"]
    cls_k = rpn["cls_logits"]["kernel"][0, 0]  # [C, A]
    box_k = rpn["bbox_pred"]["kernel"][0, 0]  # [C, 4A]
    c, a = cls_k.shape
    w = np.zeros((a, 6, c), np.float32)
    w[:, 1], w[:, 2:] = cls_k.T, box_k.T.reshape(a, 4, c)
    b = np.zeros((a, 6), np.float32)
    b[:, 1], b[:, 2:] = rpn["cls_logits"]["bias"], rpn["bbox_pred"]["bias"].reshape(a, 4)
    sd["rpn_head.conv.2.weight"] = w.reshape(6 * a, c, 1, 1)
    sd["rpn_head.conv.2.bias"] = b.reshape(-1)
    return sd


def legacy_torchvision_names(sd: dict) -> dict:
    """Current torchvision detector names -> the pre-0.13 ones of its published COCO file."""
    out = {}
    for k, v in sd.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for blocks in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                k = k.replace(f"fpn.{blocks}.{i}.0.", f"fpn.{blocks}.{i}.")
        out[k] = v
    return out


def save(tmp_path, name: str, sd: dict) -> str:
    path = str(tmp_path / name)
    W.save_npz(sd, path)
    return path


def assert_tree_equal(a, b):
    fa, fb = flat_params(a), flat_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def vgg_config(**overrides):
    return load_config("imp", "tiny", **{
        "model.backbone": "vgg16", "model.detector.backbone": "vgg16",
        "model.detector.backbone_widths": (), "eval.modes": "predcls,sgcls,sgdet", **overrides})


# ----------------------------------------------------------------------------------------------
# the vg preset's requirement and the field checks (no file contents read)


@pytest.mark.parametrize("name", ["imp", "freq", "msdn", "motifs", "kern"])
def test_vg_preset_refuses_without_weights_and_says_where_to_get_them(name):
    config = load_config(name, "vg")
    with pytest.raises(P.PretrainedWeightsError) as e:
        P.check_pretrained(config)
    msg = str(e.value)
    for needle in ("model.backbone_weights", "model.detector.weights",
                   "model.detector.backbone_weights", "vgg16-397923af.pth",
                   "neural-motifs", "torch.load(weights_only=True)",
                   "--config.model.from_scratch=True"):
        assert needle in msg, needle
    assert isinstance(e.value, ValueError)


def test_from_scratch_or_weight_files_let_the_vg_preset_start(tmp_path):
    P.check_pretrained(load_config("imp", "vg", **{"model.from_scratch": True}))
    vgg = tmp_path / "vgg16.npz"
    vgg.write_bytes(b"")  # only existence is checked before the data are prepared
    P.check_pretrained(load_config("imp", "vg", **{
        "model.backbone_weights": str(vgg), "model.detector.backbone_weights": str(vgg)}))
    # one network covered: the message names only the other one
    with pytest.raises(P.PretrainedWeightsError) as e:
        P.check_pretrained(load_config("imp", "vg", **{"model.backbone_weights": str(vgg)}))
    assert "the detector (vgg16)" in str(e.value)
    assert "relation model's backbone" not in str(e.value)
    # without SGDet the run has no detector, so the relation backbone alone satisfies it
    P.check_pretrained(load_config("imp", "vg", **{"model.backbone_weights": str(vgg),
                                                   "eval.modes": "predcls,sgcls"}))
    P.check_pretrained(load_config("imp", "tiny"))  # presets other than vg need nothing


def test_missing_file_names_the_field_and_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "vgg16.npz")
    for field in ("model.backbone_weights", "model.detector.weights",
                  "model.detector.backbone_weights"):
        config = vgg_config(**{field: missing})
        with pytest.raises(P.PretrainedWeightsError,
                           match=f"{field}=.*nowhere/vgg16.npz.*no such file"):
            P.check_pretrained(config)


def test_weight_fields_that_do_not_fit_the_architecture_are_refused(tmp_path):
    f = str(tmp_path / "w.npz")
    cases = [
        (load_config("imp", "tiny", **{"model.backbone_weights": f}),
         "model.backbone='small_resnet'"),
        (load_config("imp", "tiny", **{"model.detector.backbone_weights": f}),
         "model.detector.backbone='small_resnet'"),
        (vgg_config(**{"model.detector.backbone": "resnet50", "model.detector.weights": f}),
         "vgg16 .*or resnet50_fpn"),
        (vgg_config(**{"model.detector.weights": f, "model.detector.backbone_weights": f}),
         "set one"),
    ]
    for config, pattern in cases:
        with pytest.raises(P.PretrainedWeightsError, match=pattern):
            P.check_pretrained(config)


# ----------------------------------------------------------------------------------------------
# imports: exact round trips, other groups untouched


@pytest.mark.parametrize("data_name", ["vg150", "synthetic"])
def test_vgg16_backbone_and_neural_motifs_detector_import_exactly(tmp_path, caplog, data_name):
    base = vgg_config(**{"data.name": data_name})
    params, state, det_state = run_variables(base, seed=0)  # what init gave
    src_params, _ = relation_variables("vgg16", seed=10)  # what the files hold
    src_det = detector_variables(base, seed=20)
    backbone_file = save(tmp_path, "vgg16.npz", W.export_state_dict(
        {"params": src_params}, W.vgg16_rules(("backbone",))))
    nm_sd = {f"detector.{k}": v for k, v in nm_state_dict(src_det).items()}  # a relation ckpt
    nm_file = save(tmp_path, "vg-24.npz", nm_sd)
    config = vgg_config(**{"data.name": data_name, "model.backbone_weights": backbone_file,
                           "model.detector.weights": nm_file})
    P.check_pretrained(config)
    with caplog.at_level(logging.INFO, logger="sgg_jax"):
        new, new_state, new_det_state = P.apply_pretrained(config, params, state, det_state)
    assert_tree_equal(new["backbone"], src_params["backbone"])
    for group in ("roi_features", "obj_classifier"):
        assert new[group] is params[group]
    predictor = ("cls_score", "bbox_pred")
    expect = dict(src_det["params"])
    expect["roi_head"] = dict(expect["roi_head"])
    if data_name != "vg150":  # neural-motifs' classes are VG150's: kept only on VG150 data
        for k in predictor:
            expect["roi_head"][k] = params["detector"]["roi_head"][k]
    assert_tree_equal(new["detector"], expect)
    assert new_state == {} and new_det_state == {}
    lines = [r.getMessage() for r in caplog.records if "pretrained:" in r.getMessage()]
    assert len(lines) == 2 and "neural-motifs" in lines[1]
    assert ("box predictor left at initialisation" in lines[1]) == (data_name != "vg150")


def resnet_config(**overrides):
    return load_config("imp", "tiny", **{
        "model.backbone": "resnet50", "model.detector.backbone": "resnet50_fpn",
        "model.detector.backbone_widths": (), "eval.modes": "predcls,sgcls,sgdet",
        "model.detector.anchor_sizes": (32.0, 64.0, 128.0, 256.0, 512.0), **overrides})


def test_resnet50_backbone_and_torchvision_detector_import_with_batch_norm_statistics(tmp_path):
    base = resnet_config()
    params, state, det_state = run_variables(base, seed=0)
    src_params, src_state = relation_variables("resnet50", seed=10)
    src_det = detector_variables(base, seed=20)
    rn_sd = W.export_state_dict({"params": src_params, **src_state},
                                W.resnet50_rules(("backbone",), "", num_layers=3))
    rn_sd["bn1.num_batches_tracked"] = np.array(7)  # as in torchvision's files: unused
    tv_sd = legacy_torchvision_names(W.export_state_dict(src_det, W.torchvision_fasterrcnn_rules()))
    assert "rpn.head.conv.weight" in tv_sd and "backbone.fpn.inner_blocks.0.weight" in tv_sd
    config = resnet_config(**{"model.backbone_weights": save(tmp_path, "resnet50.npz", rn_sd),
                              "model.detector.weights": save(tmp_path, "frcnn.npz", tv_sd)})
    new, new_state, new_det_state = P.apply_pretrained(config, params, state, det_state)
    assert_tree_equal(new["backbone"], src_params["backbone"])
    assert_tree_equal(new_state, src_state)  # frozen BN statistics of the relation backbone
    assert_tree_equal(new_det_state, {k: v for k, v in src_det.items() if k != "params"})
    expect = dict(src_det["params"])
    expect["roi_head"] = dict(expect["roi_head"], **{  # COCO classes: predictor kept
        k: params["detector"]["roi_head"][k] for k in ("cls_score", "bbox_pred")})
    assert_tree_equal(new["detector"], expect)
    assert new["roi_features"] is params["roi_features"]


def test_detector_backbone_weights_fill_the_trunk_only_keeping_the_sharding(tmp_path):
    base = vgg_config(**{"model.detector.backbone": "resnet50"})
    params, state, det_state = run_variables(base, seed=0)
    # as trainer.init_params leaves them: replicated over a device mesh
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params["detector"], det_state = jax.device_put((params["detector"], det_state), replicated)
    src, src_state = relation_variables("resnet50", seed=10)  # the same C4 trunk
    sd = W.export_state_dict({"params": src, **src_state},
                             W.resnet50_rules(("backbone",), "", num_layers=3))
    sd["fc.weight"] = np.zeros((10, 2048), np.float32)  # ImageNet classifier: unused
    config = vgg_config(**{"model.detector.backbone": "resnet50",
                           "model.detector.backbone_weights": save(tmp_path, "r50.npz", sd)})
    new, new_state, new_det_state = P.apply_pretrained(config, params, state, det_state)
    assert_tree_equal(new["detector"]["backbone"], src["backbone"])
    assert_tree_equal(new_det_state["batch_stats"]["backbone"],
                      src_state["batch_stats"]["backbone"])
    for module in ("rpn", "roi_head"):
        assert_tree_equal(new["detector"][module], params["detector"][module])
    assert new["backbone"] is params["backbone"] and new_state == state
    for leaf in jax.tree.leaves((new["detector"], new_det_state)):
        assert isinstance(leaf, jax.Array) and leaf.sharding == replicated


def test_vgg16_detector_takes_imagenet_fc6_fc7_only_at_4096():
    sd = {"features.0.weight": None, "classifier.0.weight": None}
    src = P.WeightSource("model.detector.backbone_weights", "x.npz", "detector", "imagenet",
                         "vgg16")
    rules, _, what = P.source_rules(src, sd, vgg_config(**{"model.detector.fc_dim": 4096}))
    assert {r.source for r in rules} >= {"classifier.0.weight", "classifier.3.bias"}
    assert "fc6 / fc7" in what
    rules, _, what = P.source_rules(src, sd, vgg_config())  # fc_dim 32: trunk only
    assert all(r.source.startswith("features.") for r in rules)


def test_a_file_of_another_architecture_is_refused_naming_file_and_tensors(tmp_path):
    params, state, det_state = run_variables(vgg_config(), seed=0)
    resnet, resnet_state = relation_variables("resnet50", seed=1)
    wrong = save(tmp_path, "resnet50.npz", W.export_state_dict(
        {"params": resnet, **resnet_state}, W.resnet50_rules(("backbone",), "", num_layers=3)))
    config = vgg_config(**{"model.backbone_weights": wrong})
    with pytest.raises(P.PretrainedWeightsError) as e:
        P.apply_pretrained(config, params, state, det_state)
    msg = str(e.value)
    assert "model.backbone_weights=" in msg and "resnet50.npz" in msg
    assert "26 of 26 tensors do not fit" in msg and "features.0.weight missing" in msg
    assert "conv1.weight" in msg and "vgg16-397923af.pth" in msg
    # the right names with one mis-shaped tensor: that tensor and both shapes are named
    src, _ = relation_variables("vgg16", seed=2)
    sd = W.export_state_dict({"params": src}, W.vgg16_rules(("backbone",)))
    sd["features.2.weight"] = sd["features.2.weight"][:32]
    config = vgg_config(**{"model.backbone_weights": save(tmp_path, "cut.npz", sd)})
    with pytest.raises(P.PretrainedWeightsError,
                       match=r"cut.npz.*1 of 26 tensors.*features\.2\.weight \(32, 64, 3, 3\) "
                             r"does not fit backbone/conv1_2/kernel \(3, 3, 64, 64\)"):
        P.apply_pretrained(config, params, state, det_state)


def test_the_vg_preset_detector_has_the_shapes_of_neural_motifs_checkpoint():
    """Every tensor of neural-motifs' VG detector checkpoint (its published shapes: VGG16,
    4096-d fc6 / fc7, 151 classes, 512-d RPN with 20 anchors of 6 outputs) fits the vg preset's
    detector, box predictor included (zero-strided arrays: no memory, no compilation)."""
    config = load_config("imp", "vg")
    published = {"roi_fmap.0": (4096, 512 * 7 * 7), "roi_fmap.3": (4096, 4096),
                 "score_fc": (151, 4096), "bbox_fc": (151 * 4, 4096),
                 "rpn_head.conv.0": (512, 512, 3, 3), "rpn_head.conv.2": (20 * 6, 512, 1, 1)}
    cin = 3
    for name, idx in W.VGG16_CONVS:
        cout = 64 * 2 ** min(int(name[4]) - 1, 3)
        published[f"features.{idx}"] = (cout, cin, 3, 3)
        cin = cout
    zeros = lambda shape: np.broadcast_to(np.float32(0), shape)
    sd = {}
    for name, shape in published.items():
        sd[f"{name}.weight"], sd[f"{name}.bias"] = zeros(shape), zeros(shape[:1])
    rules = W.neural_motifs_detector_rules()
    assert {r.source for r in rules} == set(sd)
    assert P.fit_problems(detector_shapes(config, 150), sd, rules) == []
    config.model.detector.aspect_ratios = (0.5, 1.0, 2.0)  # 15 anchors: the RPN no longer fits
    problems = P.fit_problems(detector_shapes(config, 150), sd, rules)
    assert problems and all(p.startswith("rpn_head.conv.2") for p in problems)


def test_init_params_imports_the_configured_file(tmp_path):
    """The wiring: experiment.init_params (training, resume, eval and predict all start there)
    returns the file's tensors in the detector's backbone, replicated like every parameter."""
    from data_pipelines.facts import DatasetFacts
    from data_pipelines.statistics import DatasetStatistics
    from sgg_jax.training import experiment

    labels = ("__background__",) + tuple(f"class{i}" for i in range(NUM_CLASSES))
    predicates = ("__background__", "on", "near")
    c, p = len(labels), len(predicates)
    stats = DatasetStatistics(np.zeros(c, np.int64), np.zeros(p, np.int64),
                              np.zeros((c, c, p), np.int64), np.zeros((c, c), np.int64),
                              list(labels), list(predicates), 0)
    facts = DatasetFacts(labels, predicates, ("<pad>", "<start>", "<end>", "<unk>"), stats)
    overrides = {"model.detector.backbone": "vgg16", "model.detector.backbone_widths": (),
                 "eval.modes": "predcls,sgcls,sgdet", "input.image_size": SIZE}
    src = random_like(detector_shapes(load_config("imp", "tiny", **overrides)), seed=3)
    sd = W.export_state_dict(src, W.vgg16_rules(("backbone",)))
    config = load_config("imp", "tiny", **overrides, **{
        "model.detector.backbone_weights": save(tmp_path, "vgg16.npz", sd)})
    exp = experiment.setup(config, str(tmp_path / "run"), facts=facts)
    params = experiment.init_params(exp, jax.random.key(0))
    assert_tree_equal(params["detector"]["backbone"], src["params"]["backbone"])
    leaf = jax.tree.leaves(params["detector"]["backbone"])[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == len(jax.devices())
