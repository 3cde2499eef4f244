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


def test_dnorm_is_mean_times_density():
    base = losses.edge_loss(LOGITS, LABELS, MASK, "baseline")
    dnorm = losses.edge_loss(LOGITS, LABELS, MASK, "dnorm")
    np.testing.assert_allclose(float(dnorm), float(base) * 5 / 3, rtol=1e-6)


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
