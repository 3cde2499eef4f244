"""sgg_jax.ops.conv: a drop-in conv whose custom gradient must equal autodiff of lax's conv."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgg_jax.ops.conv as conv_op
from sgg_jax.ops.conv import conv_general_dilated


@pytest.mark.parametrize("k,stride,pad,hw,winograd,few", [
    (1, 1, 0, (9, 10), 0, 64), (1, 2, 0, (9, 10), 0, 64), (3, 1, 1, (9, 10), 0, 64),
    (2, 1, 0, (9, 10), 0, 64),
    # strided k x k: few input channels (space-to-depth kernel gradient) or many (im2col input
    # gradient); the stem's 7x7/2 pad 3, a stride-3 3x3 with uneven padding
    (3, 2, 1, (9, 10), 0, 64), (3, 2, 1, (9, 10), 0, 1), (7, 2, 3, (9, 10), 0, 64),
    (3, 3, (0, 2), (9, 10), 0, 64), (3, 3, (0, 2), (9, 10), 0, 1),
    # Winograd F(m x m, 3x3), m = 2 or 4: sizes that leave partial last tiles, a single pixel
    (3, 1, 1, (9, 10), 2, 64), (3, 1, 1, (1, 1), 2, 64), (3, 1, 1, (9, 10), 4, 64),
    (3, 1, 1, (6, 7), 4, 64)])
def test_value_and_gradients_match_lax(k, stride, pad, hw, winograd, few, monkeypatch):
    monkeypatch.setattr(conv_op, "WINOGRAD_MIN_CHANNELS", 1 if winograd else 1 << 30)
    monkeypatch.setattr(conv_op, "WINOGRAD_MIN_PIXELS_PER_CHANNEL", 0)
    monkeypatch.setattr(conv_op, "WINOGRAD_TILE", winograd or 2)
    monkeypatch.setattr(conv_op, "STRIDED_FEW_CHANNELS", few)   # 5 input channels below
    tol = 5e-5 if winograd == 4 else 1e-5   # F(4x4)'s transforms (up to 8x) round more
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.standard_normal((2, *hw, 5)), jnp.float32)   # odd sizes: strided edges
    w = jnp.asarray(rng.standard_normal((k, k, 5, 7)), jnp.float32)
    args = dict(window_strides=(stride, stride), padding=[pad if isinstance(pad, tuple) else (pad, pad)] * 2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, **args)
    ours = lambda x, w: conv_general_dilated(x, w, **args)
    np.testing.assert_allclose(jax.jit(ours)(x, w), ref(x, w), rtol=tol, atol=tol)
    loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w))))   # non-constant cotangent
    grads = lambda f: jax.jit(jax.grad(loss(f), (0, 1)))(x, w)   # one compile, not op by op
    for g_ours, g_ref in zip(grads(ours), grads(ref)):
        np.testing.assert_allclose(g_ours, g_ref, rtol=10 * tol, atol=10 * tol)


def test_other_layouts_fall_back_to_lax():
    x = jnp.ones((1, 3, 6, 6))
    w = jnp.ones((4, 3, 3, 3))
    out = conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=("NCHW", "OIHW", "NCHW"))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2,
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
    np.testing.assert_array_equal(out, ref)


def test_winograd_only_where_configured():
    """3x3 stride-1 pad-1 convs with enough channels and pixels become batched dots (no conv op
    left in the forward or backward); a stride-2 one, or one with too few of either, stays an
    XLA conv."""
    c = conv_op.WINOGRAD_MIN_CHANNELS
    enough = -(-conv_op.WINOGRAD_MIN_PIXELS_PER_CHANNEL * c // 2)   # pixels per image, batch 2

    def prims(stride, channels, pixels=enough):
        x = jnp.ones((2, 1, pixels, channels))
        w = jnp.ones((3, 3, channels, channels))
        f = lambda x, w: conv_general_dilated(x, w, (stride, stride), [(1, 1)] * 2,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
        return str(jax.make_jaxpr(jax.grad(f, (0, 1)))(x, w))
    assert "conv_general_dilated" not in prims(1, c) and "dot_general" in prims(1, c)
    assert "conv_general_dilated" in prims(2, c)
    assert "conv_general_dilated" in prims(1, c - 1)
    assert "conv_general_dilated" in prims(1, c, enough - 1)


@pytest.mark.parametrize("k,stride,padding", [(1, 1, "SAME"), (1, 2, "SAME"), (1, 1, "VALID"),
                                              (3, 1, "SAME"), (3, 2, "SAME"), (3, 2, "VALID")])
def test_string_padding_matches_lax_and_takes_the_fast_path(k, stride, padding):
    """Flax's nn.Conv passes its default padding "SAME" as a string: it must mean lax's pads
    (values and both gradients), and a 1x1 conv must still become dots, not an XLA conv."""
    rng = np.random.default_rng(k + 10 * stride)
    x = jnp.asarray(rng.standard_normal((2, 9, 10, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 5, 7)), jnp.float32)
    args = dict(window_strides=(stride, stride), padding=padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, **args)
    ours = lambda x, w: conv_general_dilated(x, w, **args)
    np.testing.assert_allclose(jax.jit(ours)(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w))))
    for g_ours, g_ref in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(x, w),
                             jax.jit(jax.grad(loss(ref), (0, 1)))(x, w)):
        np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-4)
    if k == 1:
        assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(loss(ours), (0, 1)))(x, w))


def test_fpn_and_rpn_head_have_no_xla_convs(monkeypatch):
    """Every conv of the FPN and the RPN head (1x1 laterals and predictors declared with Flax's
    default "SAME" padding, 3x3 outputs) runs as dots forward and backward once Winograd
    applies to its size -- an XLA conv left there is the slow kernel gradient this op avoids."""
    from sgg_jax.models.detection.fpn import FPN
    from sgg_jax.models.detection.rpn import RPNHead

    monkeypatch.setattr(conv_op, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_op, "WINOGRAD_MIN_PIXELS_PER_CHANNEL", 0)
    feats = [jnp.ones((1, 16 // 2 ** i, 16 // 2 ** i, 4 * 2 ** i)) for i in range(4)]
    fpn = FPN(channels=8)
    p = fpn.init(jax.random.PRNGKey(0), feats)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(
        lambda p, f: sum(o.sum() for o in fpn.apply(p, f)), (0, 1)))(p, feats))
    head = RPNHead(channels=8, num_anchors=3)
    levels = fpn.apply(p, feats)
    ph = head.init(jax.random.PRNGKey(1), levels)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(
        lambda p, f: sum(jax.tree.leaves(jax.tree.map(jnp.sum, head.apply(p, f)))), (0, 1)))(ph, levels))


@pytest.mark.parametrize("k,stride,pad", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (7, 2, 3)])
def test_off_cpu_every_conv_is_xla_forward_and_backward(k, stride, pad, monkeypatch):
    """On a GPU / TPU default backend the op is lax's conv itself (cuDNN / MXU convs and their
    native gradients): the same jaxpr as `lax.conv_general_dilated`, no custom gradient. On the
    CPU the same shapes take the matrix-product paths."""
    x = jnp.ones((2, 16, 16, 64))
    w = jnp.ones((k, k, 64, 64))

    def grad_jaxpr(f):
        loss = lambda x, w: f(x, w, (stride, stride), [(pad, pad)] * 2,
                              dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
        return str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w))

    assert grad_jaxpr(conv_general_dilated) != grad_jaxpr(jax.lax.conv_general_dilated)
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        assert not conv_op.matmul_gradients()
        assert grad_jaxpr(conv_general_dilated) == grad_jaxpr(jax.lax.conv_general_dilated)
