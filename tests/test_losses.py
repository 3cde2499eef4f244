"""Object and edge losses against hand-computed cross-entropies."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax import losses


def _ce(logits, label):
    logits = np.asarray(logits, np.float64)
    return np.log(np.exp(logits).sum()) - logits[label]


LOGITS = np.array([[[2.0, 0.0, 1.0], [0.5, 0.5, 3.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
                   [[0.0, 1.0, 0.0], [3.0, 1.0, 1.0], [9.0, 9.0, 9.0], [0.0, 0.0, 0.0]]],
                  np.float32)
LABELS = np.array([[0, 2, 1, 0], [1, 0, 2, 0]], np.int32)
MASK = np.array([[True, True, True, False], [True, True, False, False]])


def _hand():
    ce = {(b, m): _ce(LOGITS[b, m], LABELS[b, m]) for b in range(2) for m in range(4) if MASK[b, m]}
    fg = [v for (b, m), v in ce.items() if LABELS[b, m] > 0]
    bg = [v for (b, m), v in ce.items() if LABELS[b, m] == 0]
    return ce, fg, bg


@pytest.mark.parametrize("kind", ["baseline", "dnorm", "dnorm-fgbg"])
def test_edge_loss_formulas(kind):
    ce, fg, bg = _hand()  # M = 5 real edges, M_FG = 3, M_BG = 2
    assert (len(ce), len(fg), len(bg)) == (5, 3, 2)
    expected = {"baseline": sum(ce.values()) / 5,
                "dnorm": sum(ce.values()) / 3,
                "dnorm-fgbg": sum(fg) / 3 + sum(bg) / 2}[kind]
    got = losses.edge_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(MASK), kind)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def numpy_edge_loss(logits, labels, mask, kind):
    """Independent reference from the formulas of sgg_jax/losses.py's docstring (Knyazev et al.,
    bknyaz/sgg `edge_losses`): float64 log-sum-exp CE per real edge, then
    baseline = sum CE / M, dnorm = sum CE / M_FG, dnorm-fgbg = sum_fg CE / M_FG + sum_bg CE / M_BG,
    a count of 0 counting as 1 (the reference's weight 1); no real edge -> 0."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    ce = log_z - np.take_along_axis(logits, labels[..., None].astype(np.int64), -1)[..., 0]
    real = np.asarray(mask, bool)
    fg, bg = real & (labels > 0), real & (labels == 0)
    count = lambda m: max(int(m.sum()), 1)
    if kind == "baseline":
        return ce[real].sum() / count(real)
    if kind == "dnorm":
        return ce[real].sum() / count(fg)
    return ce[fg].sum() / count(fg) + ce[bg].sum() / count(bg)


# (foreground rate, real-edge rate) of the random batches, and what the batch then holds.
REGIMES = {"no foreground": (0.0, 0.6), "no background": (1.0, 1.0), "no real edge": (0.5, 0.0),
           "sparse": (0.1, 0.7), "mixed": (0.3, 0.6), "dense": (0.8, 0.5)}


@pytest.mark.parametrize("kind", ["baseline", "dnorm", "dnorm-fgbg"])
@pytest.mark.parametrize("seed,regime", list(enumerate(REGIMES)))
def test_edge_loss_matches_numpy_reference_on_random_batches(kind, seed, regime):
    """Random batches of every density, the guards' cases included, with large logits in padded
    rows that must not leak."""
    rng = np.random.default_rng(seed)
    b, m, p = 3, 9, 6
    fg_rate, real_rate = REGIMES[regime]
    logits = rng.normal(0.0, 3.0, (b, m, p)).astype(np.float32)
    labels = np.where(rng.random((b, m)) < fg_rate, rng.integers(1, p, (b, m)), 0)
    mask = rng.random((b, m)) < real_rate
    n_fg, n_bg = int((mask & (labels > 0)).sum()), int((mask & (labels == 0)).sum())
    assert {"no foreground": n_fg == 0 < n_bg, "no background": n_bg == 0 < n_fg,
            "no real edge": n_fg == n_bg == 0}.get(regime, n_fg > 0 and n_bg > 0)
    logits[~mask] *= 30.0  # padded rows: huge logits, a large CE if they leaked
    want = numpy_edge_loss(logits, labels, mask, kind)
    got = float(losses.edge_loss(jnp.asarray(logits), jnp.asarray(labels, jnp.int32),
                                 jnp.asarray(mask), kind))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dnorm_is_mean_times_density():
    """Knyazev et al.'s identity dnorm = baseline x M / M_FG, checked on the NumPy reference's
    numbers against the library's dnorm (M = 5 real edges, M_FG = 3)."""
    base = numpy_edge_loss(LOGITS, LABELS, MASK, "baseline")
    dnorm = float(losses.edge_loss(LOGITS, LABELS, MASK, "dnorm"))
    np.testing.assert_allclose(dnorm, base * 5 / 3, rtol=1e-5)
    np.testing.assert_allclose(base, np.mean(list(_hand()[0].values())), rtol=1e-12)


def test_edge_loss_no_foreground_guard():
    labels = np.zeros_like(LABELS)
    ce = sum(_ce(LOGITS[b, m], 0) for b in range(2) for m in range(4) if MASK[b, m])
    # Reference: weights stay 1 when M_FG = 0 -> dnorm sums the background CE.
    np.testing.assert_allclose(float(losses.edge_loss(LOGITS, labels, MASK, "dnorm")), ce,
                               rtol=1e-5)
    np.testing.assert_allclose(float(losses.edge_loss(LOGITS, labels, MASK, "dnorm-fgbg")),
                               ce / 5, rtol=1e-5)
    empty = np.zeros_like(MASK)
    assert float(losses.edge_loss(LOGITS, labels, empty, "dnorm")) == 0.0


def test_object_loss_masked_mean():
    expected = np.mean([_ce(LOGITS[b, m], LABELS[b, m]) for b in range(2) for m in range(4)
                        if MASK[b, m]])
    got = losses.object_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(MASK))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # Padded rows with NaN logits do not leak.
    bad = LOGITS.copy()
    bad[~MASK] = np.nan
    np.testing.assert_allclose(float(losses.object_loss(bad, LABELS, MASK)), expected, rtol=1e-5)


def test_edge_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="loss.edge"):
        losses.edge_loss(LOGITS, LABELS, MASK, "focal")
