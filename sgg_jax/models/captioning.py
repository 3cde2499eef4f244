"""An LSTM region captioner (MSDN's): teacher forcing, greedy and beam-search decoding.

`RegionCaptioner(vocab_size, hidden_dim)` reads one feature vector per region: the vector is
the first input of a 2-layer LSTM (position 0, no loss), then words follow. Token ids are the
input pipeline's (data_pipelines/tfds_sgg.py): 0 <pad>, 1 <start>, 2 <end>, 3 <unk>.
Decoding runs under `lax.scan` over time (fixed shapes; no Python loop over regions or steps).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PAD, START, END = 0, 1, 2  # token ids of the input pipeline (data_pipelines/tfds_sgg.py)


class CaptionStep(nn.Module):
    """One time step of the 2-layer LSTM captioner (scanned over time by `RegionCaptioner`).

    carry = (lstm carries, previous prediction [N], done [N]); x = (image embedding used at this
    step? [], teacher token [N] or -1 = feed the previous prediction). Returns the logits and the
    greedy prediction (PAD after <end>; PAD and <start> are never predicted).
    """

    vocab_size: int
    hidden_dim: int
    num_layers: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, x):
        cells, prev, done, image = carry
        is_image, teacher = x
        tok = jnp.where(teacher >= 0, teacher, prev)
        emb = nn.Embed(self.vocab_size, self.hidden_dim, dtype=self.dtype, name="embed")(tok)
        inp = jnp.where(is_image, image, emb)
        new_cells = []
        for layer in range(self.num_layers):
            c, inp = nn.OptimizedLSTMCell(self.hidden_dim, dtype=self.dtype,
                                          name=f"lstm{layer}")(cells[layer], inp)
            new_cells.append(c)
        logits = nn.Dense(self.vocab_size, dtype=self.dtype, name="word_logits")(inp)
        banned = (jnp.arange(self.vocab_size) == PAD) | (jnp.arange(self.vocab_size) == START)
        pred = jnp.argmax(jnp.where(banned, -jnp.inf, logits.astype(jnp.float32)), axis=-1)
        pred = jnp.where(done, PAD, pred).astype(jnp.int32)
        done = done | ((pred == END) & ~is_image)
        return (tuple(new_cells), pred, done, image), (logits, pred)


class RegionCaptioner(nn.Module):
    """2-layer LSTM captioner: the region feature is the first input (MSDN's image step), then
    the words. `teacher_logits` scores `tokens` (teacher forcing); `greedy` decodes."""

    vocab_size: int
    hidden_dim: int = 512
    dtype: Any = jnp.float32

    def setup(self):
        self.image_proj = nn.Dense(self.hidden_dim, dtype=self.dtype)
        self.decoder = nn.scan(CaptionStep, variable_broadcast="params",
                               split_rngs={"params": False}, in_axes=0, out_axes=0)(
            self.vocab_size, self.hidden_dim, 2, self.dtype)

    def _run(self, feats: jnp.ndarray, teacher: jnp.ndarray):
        """feats [N, F], teacher [L, N] (token or -1) -> logits [L, N, V], preds [L, N]."""
        n = feats.shape[0]
        length = teacher.shape[0]
        image = nn.relu(self.image_proj(feats))
        zeros = jnp.zeros((n, self.hidden_dim), self.dtype)
        cells = tuple((zeros, zeros) for _ in range(2))
        carry = (cells, jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool), image)
        is_image = jnp.arange(length) == 0
        _, (logits, preds) = self.decoder(carry, (is_image, teacher))
        return logits, preds

    def teacher_logits(self, feats: jnp.ndarray, tokens: jnp.ndarray) -> jnp.ndarray:
        """feats [B, Q, F], tokens [B, Q, L] -> logits [B, Q, L, V]; position t predicts
        tokens[..., t] from the image and tokens[..., :t]."""
        b, q, length = tokens.shape
        flat = tokens.reshape(b * q, length)
        teacher = jnp.concatenate([jnp.zeros((1, b * q), jnp.int32),
                                   flat[:, :-1].T.astype(jnp.int32)], axis=0)
        logits, _ = self._run(feats.reshape(b * q, -1), teacher)
        return jnp.moveaxis(logits, 0, 1).reshape(b, q, length, -1)

    def greedy(self, feats: jnp.ndarray, length: int) -> jnp.ndarray:
        """feats [B, Q, F] -> token ids [B, Q, length]: <start>, greedy words up to <end>, PAD."""
        b, q = feats.shape[:2]
        teacher = jnp.full((length, b * q), -1, jnp.int32).at[:2].set(
            jnp.array([PAD, START], jnp.int32)[:, None])
        _, preds = self._run(feats.reshape(b * q, -1), teacher)
        preds = preds.T.at[:, 0].set(START)  # the image step's output stands for <start>
        return preds.reshape(b, q, length)

    def beam(self, feats: jnp.ndarray, length: int, beam_size: int) -> jnp.ndarray:
        """feats [B, Q, F] -> token ids [B, Q, length], as `greedy`, but the caption of highest
        total log-probability (over the words and <end>; PAD and <start> excluded, as greedy)
        among `beam_size` hypotheses kept per region; beam_size 1 is greedy. Finished
        hypotheses keep their score and extend only by PAD. The loop is over time steps
        (`length` - 1 one-step scans of the same decoder), fixed shapes throughout."""
        b, q = feats.shape[:2]
        n, k, v = b * q, beam_size, self.vocab_size
        step = lambda carry, is_image, tok: self.decoder(
            carry, (jnp.asarray([is_image]), tok[None].astype(jnp.int32)))
        zeros = jnp.zeros((n, self.hidden_dim), self.dtype)
        image = nn.relu(self.image_proj(feats.reshape(n, -1)))
        carry = (tuple((zeros, zeros) for _ in range(2)), jnp.zeros((n,), jnp.int32),
                 jnp.zeros((n,), bool), image)
        carry, _ = step(carry, True, jnp.full((n,), PAD))  # MSDN's image step
        # Every row's state to its k hypotheses: [n, ...] -> [n * k, ...].
        carry = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), carry)
        tokens = jnp.zeros((n, k, length), jnp.int32).at[:, :, 0].set(START)
        scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(n, 0)  # one live
        done = jnp.zeros((n, k), bool)
        banned = jnp.isin(jnp.arange(v), jnp.array([PAD, START]))
        pad_only = jnp.where(jnp.arange(v) == PAD, 0.0, -jnp.inf)
        for t in range(1, length):
            carry, (logits, _) = step(carry, False, tokens[:, :, t - 1].reshape(n * k))
            logp = jax.nn.log_softmax(
                jnp.where(banned, -jnp.inf, logits[0].astype(jnp.float32)), axis=-1)
            logp = jnp.where(done[..., None], pad_only, logp.reshape(n, k, v))
            scores, flat = jax.lax.top_k((scores[..., None] + logp).reshape(n, k * v), k)
            parent, word = flat // v, (flat % v).astype(jnp.int32)
            pick = lambda x: jnp.take_along_axis(
                x.reshape((n, k) + x.shape[1:]),
                parent.reshape((n, k) + (1,) * (x.ndim - 1)), axis=1).reshape(x.shape)
            carry = jax.tree.map(pick, carry)
            tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1).at[:, :, t].set(word)
            done = jnp.take_along_axis(done, parent, axis=1) | (word == END)
        best = jnp.argmax(scores, axis=1)
        out = jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
        return out.reshape(b, q, length)

    def decode(self, feats: jnp.ndarray, length: int, beam_size: int = 1) -> jnp.ndarray:
        """Greedy (beam_size 1) or beam-search captions [B, Q, length]."""
        if beam_size < 1:
            raise ValueError(f"caption beam_size: expected >= 1, got {beam_size}")
        return (self.greedy(feats, length) if beam_size == 1
                else self.beam(feats, length, beam_size))

    def __call__(self, feats, tokens):
        return self.teacher_logits(feats, tokens)
