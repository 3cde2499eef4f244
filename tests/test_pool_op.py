"""sgg_jax.ops.pool.max_pool: values and gradient equal flax's max_pool (select-and-scatter),
ties included."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.ops.pool import max_pool


def _numpy_grad(x, dy, k, s, pad):
    """Independent reference: each output's cotangent goes to the first maximal input of its
    window (row-major scan), as select-and-scatter."""
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), pad, pad, (0, 0)), constant_values=-np.inf)
    dx = np.zeros_like(xp)
    for n in range(b):
        for oy in range(dy.shape[1]):
            for ox in range(dy.shape[2]):
                for ch in range(c):
                    win = xp[n, oy * s:oy * s + k, ox * s:ox * s + k, ch]
                    i, j = np.unravel_index(np.argmax(win), win.shape)   # first maximum
                    dx[n, oy * s + i, ox * s + j, ch] += dy[n, oy, ox, ch]
    return dx[:, pad[0]:xp.shape[1] - pad[1], pad[0]:xp.shape[2] - pad[1]]


@pytest.mark.parametrize("k,s,pad,hw,ties", [(3, 2, (1, 1), (9, 10), False),
                                             (3, 2, (1, 1), (8, 8), True),
                                             (2, 2, (0, 0), (8, 9), True),
                                             (3, 1, (1, 1), (5, 6), True)])
def test_max_pool_matches_flax_and_numpy(k, s, pad, hw, ties):
    rng = np.random.default_rng(k + s + hw[0])
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    if ties:   # ReLU-like: many exact zeros, and whole windows of them
        x = np.maximum(x, 0.0)
        x[:, :4, :4] = 0.0
    args = ((k, k), (s, s), (pad, pad))
    y = max_pool(jnp.asarray(x), *args)
    y_ref = nn.max_pool(jnp.asarray(x), *args)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grad = lambda f: jax.jit(jax.vjp(lambda z: f(z, *args), jnp.asarray(x))[1])(jnp.asarray(dy))[0]
    ours = np.asarray(grad(max_pool))
    np.testing.assert_allclose(ours, np.asarray(grad(nn.max_pool)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours, _numpy_grad(x, dy, k, s, pad), rtol=1e-6, atol=1e-6)


def test_off_cpu_the_gradient_is_xla_select_and_scatter(monkeypatch):
    """On a GPU / TPU default backend `max_pool` is flax's: the same jaxpr, value and gradient
    (the native select-and-scatter); on the CPU the custom elementwise gradient replaces it."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 9, 4)), jnp.float32)
    args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    jaxpr = lambda f: str(jax.make_jaxpr(jax.grad(lambda x: (f(x, *args) ** 2).sum()))(x))
    assert jaxpr(max_pool) != jaxpr(nn.max_pool)
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        assert jaxpr(max_pool) == jaxpr(nn.max_pool)
