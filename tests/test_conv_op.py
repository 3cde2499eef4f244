"""sgg_jax.ops.conv: a drop-in conv whose custom gradient must equal autodiff of lax's conv."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.ops.conv import conv_general_dilated


@pytest.mark.parametrize("k,stride,pad", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (2, 1, 0)])
def test_value_and_gradients_match_lax(k, stride, pad):
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.standard_normal((2, 9, 10, 5)), jnp.float32)   # odd sizes: strided edges
    w = jnp.asarray(rng.standard_normal((k, k, 5, 7)), jnp.float32)
    args = dict(window_strides=(stride, stride), padding=[(pad, pad)] * 2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, **args)
    ours = lambda x, w: conv_general_dilated(x, w, **args)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w))))   # non-constant cotangent
    for g_ours, g_ref in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
        np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-4)


def test_other_layouts_fall_back_to_lax():
    x = jnp.ones((1, 3, 6, 6))
    w = jnp.ones((4, 3, 3, 3))
    out = conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=("NCHW", "OIHW", "NCHW"))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2,
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
    np.testing.assert_array_equal(out, ref)
