"""Torchvision parity without torch: our RoI-align / RoI-pool and backbones against stored
torchvision outputs (tests/data/torch_reference.npz, written by
tests/data/make_torch_reference.py where torch is installed).

The inputs and weights are regenerated here from the seeded NumPy generators of
tests/torch_reference_spec.py (the weights are not stored); the stored small inputs must equal
the regenerated ones, so a change of the generators cannot go unnoticed. The live comparisons
with torch (tests/test_roi_align.py, tests/test_weights.py) run where torch is installed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.roi_align import roi_align, roi_pool
from sgg_jax import weights as W
from sgg_jax.models.backbone import VGG16, ResNet50
import torch_reference_spec as spec

TOL = 2e-5  # RoI ops: tests/test_roi_align.py's tolerance


@pytest.fixture(scope="module")
def ref():
    with np.load(spec.REFERENCE_PATH) as f:
        return {k: f[k] for k in f.files}


def test_stored_inputs_are_the_regenerated_ones(ref):
    for case, make in spec.ROI_CASES.items():
        feats, boxes, idx = make()
        np.testing.assert_array_equal(ref[f"{case}/features"], feats)
        np.testing.assert_array_equal(ref[f"{case}/boxes"], boxes)
        np.testing.assert_array_equal(ref[f"{case}/indices"], idx)
    np.testing.assert_array_equal(ref["images"], spec.images())
    assert str(ref["torch_version"]) and str(ref["torchvision_version"])


@pytest.mark.parametrize("case", list(spec.ROI_CASES))
@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_stored_torchvision(ref, case, impl, aligned):
    """pallas_kernels.roi_align (XLA path and the Pallas kernel, interpreted off TPU) equals
    torchvision.ops.roi_align(aligned=...) on the stored case."""
    feats, boxes, idx = spec.ROI_CASES[case]()
    ours = roi_align(feats, boxes, idx, spec.ROI_OUTPUT, spec.ROI_SCALE, spec.ROI_SAMPLING,
                     aligned, impl=impl)
    np.testing.assert_allclose(np.asarray(ours), ref[f"{case}/roi_align_aligned_{aligned}"],
                               atol=TOL, rtol=0)


def test_roi_align_offset_matters_on_the_stored_cases(ref):
    """The two torchvision conventions differ on these cases (by far more than TOL), so the
    comparison above tells aligned=True from aligned=False."""
    for case in spec.ROI_CASES:
        diff = np.abs(ref[f"{case}/roi_align_aligned_True"] - ref[f"{case}/roi_align_aligned_False"])
        assert diff.max() > 100 * TOL


@pytest.mark.parametrize("case", list(spec.ROI_CASES))
def test_roi_pool_matches_stored_torchvision(ref, case):
    feats, boxes, idx = spec.ROI_CASES[case]()
    ours = roi_pool(feats, boxes, idx, spec.ROI_OUTPUT, spec.ROI_SCALE)
    np.testing.assert_allclose(np.asarray(ours), ref[f"{case}/roi_pool"], atol=0, rtol=0)


def _imported(model, state_dict, rules, tmp_path):
    """Variables of `model` with every leaf imported from `state_dict`, through an .npz file
    and sgg_jax.weights (the path a converted checkpoint takes)."""
    path = str(tmp_path / "weights.npz")
    W.save_npz(state_dict, path)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 32, 32, 3), jnp.uint8)))
    variables, report = W.import_weights(shapes, W.load_state_dict(path), rules)
    assert report.unassigned_targets == []
    assert all(k.endswith(".num_batches_tracked") for k in report.unused_sources)
    return variables


def test_vgg16_matches_stored_torchvision(ref, tmp_path):
    """Our VGG16 at 1/16 width with torchvision-named weights: the output of torchvision's
    `features[:30]` (conv5_3 + ReLU) on the ImageNet-normalised images."""
    model = VGG16(width_multiplier=spec.VGG_WIDTH)
    variables = _imported(model, spec.vgg_state_dict(), W.vgg16_rules(flax_prefix=()), tmp_path)
    ours, stride = jax.jit(model.apply)(variables, jnp.asarray(ref["images"]))
    assert stride == 16 and ours.shape == ref["vgg16"].shape
    np.testing.assert_allclose(np.asarray(ours), ref["vgg16"], rtol=1e-4, atol=1e-4)


def test_resnet50_c4_matches_stored_torchvision(ref, tmp_path):
    """Our ResNet-50 (C4, frozen batch norm) at 1/16 width with torchvision-named weights and
    random batch-norm statistics: torchvision's layer3 output in eval mode."""
    model = ResNet50(width_multiplier=spec.RESNET_WIDTH)
    variables = _imported(model, spec.resnet_state_dict(),
                          W.resnet50_rules(flax_prefix=(), num_layers=3), tmp_path)
    ours, stride = jax.jit(model.apply)(variables, jnp.asarray(ref["images"]))
    assert stride == 16 and ours.shape == ref["resnet50_c4"].shape
    np.testing.assert_allclose(np.asarray(ours), ref["resnet50_c4"], rtol=1e-4, atol=1e-4)


def test_stored_reference_is_what_the_script_computes_when_torch_available(ref):
    """Where torch is installed: the script, run now, gives the stored arrays (the file is
    current for this torch / torchvision and for the spec's generators)."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(spec.REFERENCE_PATH), "make_torch_reference.py")
    loader = importlib.util.spec_from_file_location("make_torch_reference", path)
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    now = script.compute()
    assert set(now) == set(ref)
    for k in ref:
        if ref[k].dtype.kind in "fiu":
            np.testing.assert_allclose(now[k], ref[k], rtol=1e-6, atol=1e-6, err_msg=k)
