"""RoI-align / RoI-pool: XLA and Pallas (interpret mode) paths against the independent NumPy
loop reference (tests/roi_align_reference.py), hand cases, gradients (finite differences and
autodiff of the plain XLA formulation), the FPN variant, and torchvision when importable."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import roi_align as ra
from pallas_kernels.roi_align import multilevel_roi_align, roi_align, roi_pool
from roi_align_reference import roi_align_ref, roi_pool_ref

TOL = 2e-5


def _case(seed=0, b=2, h=7, w=9, c=3, r=24, lo=-8.0, hi=22.0):
    """Random boxes incl. partly/wholly outside the map, zero-size and inverted (x2 < x1) ones."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((b, h, w, c)).astype(np.float32)
    xy = rng.uniform(lo, hi, (r, 2))
    wh = rng.uniform(-1.0, 14.0, (r, 2))
    wh[:3] = 0.0                                     # zero-size boxes
    xy[3] = (60.0, 60.0)                             # wholly outside (bottom right)
    xy[4] = (-30.0, -30.0)                           # wholly outside (top left)
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    idx = rng.integers(0, b, r).astype(np.int32)
    return feats, boxes, idx


@pytest.mark.parametrize("aligned,ratio", [(True, 1), (True, 3), (False, 2)])
def test_xla_matches_reference(aligned, ratio):
    feats, boxes, idx = _case(ratio)
    out = roi_align(feats, boxes, idx, (3, 4), 0.5, ratio, aligned, impl="xla")
    ref = roi_align_ref(feats, boxes, idx, (3, 4), 0.5, ratio, aligned)
    assert out.shape == (len(boxes), 3, 4, 3)
    np.testing.assert_allclose(np.asarray(out), ref, atol=TOL, rtol=0)


def test_hand_cases():
    # f(y, x) = x: aligned sampling at bin centres of box [0,0,4,4] with 2x2 bins, 1 sample:
    # x = -0.5 + pw*2 + 1 -> 0.5, 2.5 (no clamping: inside the map).
    feats = np.tile(np.arange(6, dtype=np.float32)[None, None, :, None], (1, 6, 1, 1))
    out = np.asarray(roi_align(feats, np.array([[0, 0, 4, 4]], np.float32),
                               np.zeros(1, np.int32), 2, 1.0, 1, True, impl="xla"))
    np.testing.assert_allclose(out[0, :, :, 0], [[0.5, 2.5], [0.5, 2.5]], atol=1e-6)
    # aligned=False: no half-pixel offset -> x = 1, 3
    out = np.asarray(roi_align(feats, np.array([[0, 0, 4, 4]], np.float32),
                               np.zeros(1, np.int32), 2, 1.0, 1, False, impl="xla"))
    np.testing.assert_allclose(out[0, :, :, 0], [[1.0, 3.0], [1.0, 3.0]], atol=1e-6)
    # a constant map gives the constant inside and 0 for a box wholly outside (x < -1)
    const = np.full((1, 5, 5, 2), 3.0, np.float32)
    out = np.asarray(roi_align(const, np.array([[1, 1, 3, 4], [-20, 0, -10, 3]], np.float32),
                               np.zeros(2, np.int32), 2, 1.0, 2, True, impl="xla"))
    np.testing.assert_allclose(out[0], 3.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 0.0, atol=0)


def test_box_index_selects_image():
    feats, boxes, _ = _case(5, b=3)
    for b in range(3):
        idx = np.full(len(boxes), b, np.int32)
        out = roi_align(feats, boxes, idx, 2, 1.0, 2, impl="xla")
        single = roi_align(feats[b:b + 1], boxes, np.zeros_like(idx), 2, 1.0, 2, impl="xla")
        np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-6)


@pytest.mark.parametrize("window", [None, 4])
def test_pallas_interpret_matches_reference_and_xla(window):
    # window=4 on a 7x9 map: small boxes use the K x K window kernel, big ones the fallback.
    feats, boxes, idx = _case(11, r=10)
    boxes[5] = (0.0, 0.0, 3.0, 2.0)                  # fits a 4x4 window
    out = roi_align(feats, boxes, idx, (2, 3), 0.5, 2, True, impl="pallas", window=window)
    ref = roi_align_ref(feats, boxes, idx, (2, 3), 0.5, 2, True)
    xla = roi_align(feats, boxes, idx, (2, 3), 0.5, 2, True, impl="xla")
    np.testing.assert_allclose(np.asarray(out), ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(xla), atol=TOL, rtol=0)


def test_pallas_window_fits_flags():
    feats, _, _ = _case(3)
    boxes = jnp.array([[0, 0, 3, 2], [0, 0, 18, 14]], jnp.float32)
    run = jax.jit(lambda f, bx: ra._pallas_forward(
        f, *ra._roi_taps(bx, 0.5, True, (2, 2), 2, 7, 9), jnp.zeros(2, jnp.int32), 4, None))
    out, fits = run(jnp.asarray(feats), boxes)
    assert fits.tolist() == [True, False]
    ref = roi_align_ref(feats, np.asarray(boxes), [0, 0], (2, 2), 0.5, 2, True)
    np.testing.assert_allclose(np.asarray(out[0]), ref[0], atol=TOL)


def _plain_xla(feats, boxes, idx, out_hw, scale, ratio, aligned):
    """The XLA forward without the custom VJP (autodiff gives the scatter-add gradient)."""
    b, h, w, c = feats.shape
    taps = ra._roi_taps(jnp.asarray(boxes), scale, aligned, out_hw, ratio, h, w)
    return ra._xla_forward(feats, *taps, jnp.asarray(idx))


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_gradients(impl):
    feats, boxes, idx = _case(21, r=9)
    rng = np.random.default_rng(0)
    cot = jnp.asarray(rng.standard_normal((9, 3, 2, 3)).astype(np.float32))

    def loss(f):
        return jnp.sum(roi_align(f, boxes, idx, (3, 2), 0.5, 2, True, impl=impl) * cot)

    grad = jax.jit(jax.grad(loss))(jnp.asarray(feats))
    auto = jax.jit(jax.grad(
        lambda f: jnp.sum(_plain_xla(f, boxes, idx, (3, 2), 0.5, 2, True) * cot)))(
        jnp.asarray(feats))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(auto), atol=1e-5)
    # roi_align is linear in the features: a central difference along a random direction is
    # exact up to rounding.
    v = rng.standard_normal(feats.shape).astype(np.float32)
    eps = 1e-2
    loss_j = jax.jit(loss)
    fd = (float(loss_j(feats + eps * v)) - float(loss_j(feats - eps * v))) / (2 * eps)
    assert math.isclose(fd, float(jnp.sum(grad * v)), rel_tol=1e-3, abs_tol=1e-3)


def test_gradient_many_images_chunking():
    # more RoIs than one chunk per image and an image with no RoI: exercises the chunk layout
    feats, boxes, _ = _case(4, b=4, r=40)
    idx = np.array([0] * 25 + [2] * 15, np.int32)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((40, 2, 2, 3)), jnp.float32)
    g = jax.jit(jax.grad(
        lambda f: jnp.sum(roi_align(f, boxes, idx, 2, 1.0, 2, impl="xla") * cot)))(
        jnp.asarray(feats))
    a = jax.jit(jax.grad(
        lambda f: jnp.sum(_plain_xla(f, boxes, idx, (2, 2), 1.0, 2, True) * cot)))(
        jnp.asarray(feats))
    np.testing.assert_allclose(np.asarray(g), np.asarray(a), atol=1e-5)
    assert float(jnp.abs(g[1]).max()) == 0.0 and float(jnp.abs(g[3]).max()) == 0.0
    # the backward's loop with 3 bins per step: 160 bins, the last window overlapping
    taps = ra._roi_taps(jnp.asarray(boxes), 1.0, True, (2, 2), 2, 7, 9)
    small = jax.jit(lambda d: ra._features_vjp(feats.shape, jnp.float32, *taps, jnp.asarray(idx),
                                               d, chunk_floats=3 * 16 * 3))(cot)
    np.testing.assert_allclose(np.asarray(small), np.asarray(a), atol=1e-5)
    # the forward's loop in windows of 7 bins (the last one overlapping) == one plain gather
    fi, fw = ra._flat_taps(jnp.asarray(idx) * 7, *taps, 9)
    table = jnp.asarray(feats).reshape(-1, 3)
    np.testing.assert_allclose(np.asarray(ra._gather_sum_chunked(table, fi, fw, 7 * 3)),
                               np.asarray(ra._gather_sum(table, fi, fw)), atol=1e-6)


def test_jit_and_errors():
    feats, boxes, idx = _case(2)
    f = jax.jit(lambda a, b, c: roi_align(a, b, c, 2, 0.5, 2))
    np.testing.assert_allclose(np.asarray(f(feats, boxes, idx)),
                               roi_align_ref(feats, boxes, idx, (2, 2), 0.5, 2), atol=TOL)
    with pytest.raises(ValueError, match="features"):
        roi_align(feats[0], boxes, idx, 2)
    with pytest.raises(ValueError, match="boxes"):
        roi_align(feats, boxes[:, :3], idx, 2)
    with pytest.raises(ValueError, match="box_indices"):
        roi_align(feats, boxes, idx[:-1], 2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(feats, boxes, idx, 2, sampling_ratio=0)
    with pytest.raises(ValueError, match="impl"):
        roi_align(feats, boxes, idx, 2, impl="cuda")
    # out-of-range image index (padding marker) -> zeros
    pad = np.asarray(f(feats, boxes[:2], np.array([-1, 5], np.int32)))
    assert np.all(pad == 0)
    assert ra.resolve_impl("auto") == ("pallas" if jax.default_backend() == "tpu" else "xla")


def test_multilevel_matches_per_level_reference():
    rng = np.random.default_rng(7)
    scales = [1 / 4, 1 / 8, 1 / 16]
    feats = [rng.standard_normal((2, int(64 * s), int(80 * s), 2)).astype(np.float32)
             for s in scales]
    sizes = np.array([8, 20, 60, 100, 150, 250, 400, 30, 1e-3, 112])
    xy = rng.uniform(0, 40, (len(sizes), 2))
    boxes = np.concatenate([xy, xy + sizes[:, None]], 1).astype(np.float32)
    idx = rng.integers(0, 2, len(sizes)).astype(np.int32)
    out = multilevel_roi_align(feats, boxes, idx, (2, 2), scales, 2, True,
                               canonical_level=4, canonical_scale=224)
    for r, side in enumerate(sizes):
        # FPN rule (independent restatement): k = floor(4 + log2(sqrt(area)/224) + 1e-6),
        # clamped to the available levels 2..4
        k = int(np.clip(np.floor(4 + np.log2(side / 224) + 1e-6), 2, 4)) - 2
        ref = roi_align_ref(feats[k], boxes[r:r + 1], idx[r:r + 1], (2, 2), scales[k], 2)
        np.testing.assert_allclose(np.asarray(out[r]), ref[0], atol=TOL)
    levels = np.asarray(ra.fpn_levels(jnp.asarray(boxes), 2, 4))
    assert levels.tolist() == [0, 0, 0, 0, 1, 2, 2, 0, 0, 1]
    # gradient (custom VJP) per level == gradient of single-level roi_align over that level's
    # RoIs; and a central difference along a random direction (the op is linear in features)
    cot = jnp.asarray(rng.standard_normal((len(sizes), 2, 2, 2)), jnp.float32)
    fs = [jnp.asarray(f) for f in feats]

    def loss(fl):
        return jnp.sum(multilevel_roi_align(fl, boxes, idx, 2, scales) * cot)

    grads = jax.jit(jax.grad(loss))(fs)
    sels = [np.flatnonzero(levels == k) for k in range(3)]
    ref_grads = jax.jit(jax.grad(lambda fl: sum(
        jnp.sum(roi_align(fl[k], boxes[sel], idx[sel], 2, scales[k], 2) * cot[sel])
        for k, sel in enumerate(sels))))(fs)
    for g, ref_g in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref_g), atol=1e-5)
        assert float(jnp.abs(g).max()) > 0
    v = [rng.standard_normal(f.shape).astype(np.float32) for f in feats]
    eps = 1e-2
    lj = jax.jit(loss)
    fd = (float(lj([f + eps * d for f, d in zip(fs, v)]))
          - float(lj([f - eps * d for f, d in zip(fs, v)]))) / (2 * eps)
    assert math.isclose(fd, sum(float(jnp.sum(g * d)) for g, d in zip(grads, v)), rel_tol=1e-3,
                        abs_tol=1e-3)


def test_roi_pool_matches_reference_and_hand_case():
    feats, boxes, idx = _case(9, h=8, w=11, lo=-6.0, hi=16.0)
    for scale in (1.0, 0.5):
        out = roi_pool(feats, boxes, idx, (3, 2), scale)
        np.testing.assert_allclose(np.asarray(out), roi_pool_ref(feats, boxes, idx, (3, 2), scale),
                                   atol=0)
    # hand case: f = 10*y + x; box [1,1,4,4] -> rows/cols 1..4, 2x2 bins of 2x2 pixels;
    # maxima at the bins' bottom-right pixels (2,2),(2,4),(4,2),(4,4); a box outside -> 0.
    f = (10 * np.arange(6)[:, None] + np.arange(6)[None, :]).astype(np.float32)[None, :, :, None]
    out = np.asarray(roi_pool(f, np.array([[1, 1, 4, 4], [20, 20, 30, 30]], np.float32),
                              np.zeros(2, np.int32), 2, 1.0))
    np.testing.assert_array_equal(out[0, :, :, 0], [[22, 24], [42, 44]])
    np.testing.assert_array_equal(out[1], 0)


def test_matches_torchvision_when_available():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    feats, boxes, idx = _case(13)
    x = torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 3, 1, 2)))
    rois = torch.from_numpy(np.concatenate([idx[:, None].astype(np.float32), boxes], 1))
    for aligned in (True, False):
        tv = torchvision.ops.roi_align(x, rois, (3, 2), 0.5, 2, aligned).numpy()
        ours = np.asarray(roi_align(feats, boxes, idx, (3, 2), 0.5, 2, aligned, impl="xla"))
        np.testing.assert_allclose(ours, tv.transpose(0, 2, 3, 1), atol=TOL)
    tv = torchvision.ops.roi_pool(x, rois, (3, 2), 0.5).numpy()
    np.testing.assert_allclose(np.asarray(roi_pool(feats, boxes, idx, (3, 2), 0.5)),
                               tv.transpose(0, 2, 3, 1), atol=0)
