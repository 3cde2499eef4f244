"""SGP (Herzig et al., NeurIPS 2018): a Graph Permutation Invariant (GPI) network that refines
any base model's object and predicate logits.

Per object i: z_i = [learned embedding of its top class x that class's probability ; its class
log-probabilities ; box features]; per ordered pair (i, j): r_ij = [predicate log-probabilities ;
learned embedding of the top predicate x its probability ; pair geometry]. One GPI step:

    phi_ij = W_phi [z_j ; z_i ; r_ij]                     (SGP: one linear layer)
    S_i    = sum_j softmax_j(W_a [z_j ; z_i ; r_ij]) * phi_ij   (per feature, real j != i)
    alpha_i = W_alpha [z_i ; S_i]
    g      = sum_i softmax_i(W_b [z_i ; S_i]) * alpha_i   (per feature, real i)
    objects:   logits_i  <- rho_ent(z_i, g, S_i)      + gate_ent(...)  * logits_i
    relations: logits_ij <- rho_rel(r_ij, z_j, z_i, g) + gate_rel(...) * logits_ij

rho_* are 3-layer MLPs; the steps share their weights and each reads the previous step's logits
(`iterations`, 2 as SGP's code; its README says the paper repeats 3 times). Every sum runs
over real objects only, and every feature is computed from one object or one pair, so
permuting the objects permutes every output exactly (tests/test_sgp.py).

The base is any registered model (`config.model.base`, its config section in
`config.model.bases`), called on every ordered pair of the image's objects so that S_i sees all
of them; the refined logits are then read for the pairs the caller asked about. A base's own
parts (auxiliary networks, SGDet hooks, extra evaluations: MSDN's region RPN, region proposals,
box heads and captions) stay the base's: `resolve` gives SGP's spec those of its base, called
with the base's view of the run (`BaseView`), so SGP works in all three modes on every base.

Deviations from shikorab/SceneGraph, all deliberate: SGP's 14-d box features hold `argsort`
index arrays and the slot index (arange), which depend on the objects' order (our
`order_dependent=True` variant adds the slot index back, and the exactness test fails it); here
they are the normalised box and each object's rank among the real ones by x, y, area and
confidence, which permute with the objects. Embeddings are learned (no word2vec: nothing is
downloaded). The gates are 2·sigmoid and the corrections zero-initialised, so the refined logits
start equal to the base's (SGP: sigmoid gates, random corrections). The diagonal pair (i, i) is
left out of the sums (SGP feeds it a constant "no relation" vector). Losses are the library's
object and relation terms on the last step (SGP sums them over steps, objects x4, and reweights
negatives; here the relation sampler balances them and `loss.obj_weight` is 4).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from sgg_jax.models import registry
from sgg_jax.models.interface import ModelInputs, ModelOutputs

EPS = 1e-6
# The stage that trains GPI (configs/sgp.py); `complete_config` points it at the base's run.
STAGE = "sgp"
BASE_GROUP = "base"
# Fields a base run and the SGP run on top of it must share: the same images at the same size.
SAME_AS_BASE = (("data", "name"), ("data", "data_dir"), ("data", "num_train"),
                ("data", "num_val"), ("data", "num_test"), ("data", "image_size"),
                ("data", "seed"), ("data", "preset"), ("data", "num_val_im"),
                ("input", "image_size"), ("input", "max_objects"))


def grid_pairs(num_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair (i, j), i != j, row-major: subject and object indices [O*(O-1)]."""
    ii, jj = np.meshgrid(np.arange(num_objects), np.arange(num_objects), indexing="ij")
    off = ii != jj
    return ii[off], jj[off]


def masked_softmax(logits: jnp.ndarray, mask: jnp.ndarray, axis: int) -> jnp.ndarray:
    """Softmax over `axis` of the entries where `mask`; all-zero where none is real."""
    logits = jnp.where(mask, logits, -1e9)
    weights = nn.softmax(logits, axis=axis)
    return jnp.where(mask, weights, 0.0)


def real_ranks(key: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Per object, the fraction of the other real objects whose key is smaller: [B, O] -> [B, O]
    in [0, 1]. Ties count as not smaller, so the value depends on the set, not the order."""
    smaller = (key[:, None, :] < key[:, :, None]) & mask[:, None, :]
    count = jnp.sum(mask, axis=1, keepdims=True).astype(jnp.float32)
    return jnp.sum(smaller, axis=-1) / jnp.maximum(count - 1, 1.0)


def box_features(boxes: jnp.ndarray, mask: jnp.ndarray, image_sizes: jnp.ndarray,
                 confidence: jnp.ndarray) -> jnp.ndarray:
    """[B, O, 8]: x1, y1, x2, y2 over the image's width / height, and each object's rank
    among the image's real objects by centre x, centre y, area and confidence."""
    hw = jnp.maximum(image_sizes.astype(jnp.float32), 1.0)
    scale = jnp.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], axis=-1)[:, None]
    norm = boxes / scale
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    ranks = [real_ranks(k, mask) for k in (cx, cy, area, confidence)]
    return jnp.concatenate([norm, jnp.stack(ranks, axis=-1)], axis=-1)


def pair_geometry(boxes: jnp.ndarray) -> jnp.ndarray:
    """[B, O, O, 5] for subject i, object j: centre offset over the subject's size (x, y), log
    size ratios (w, h) and IoU. Degenerate (padded) boxes are clipped to 1 px: finite."""
    wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 1.0)
    ctr = (boxes[..., :2] + boxes[..., 2:]) / 2
    offset = (ctr[:, None, :, :] - ctr[:, :, None, :]) / wh[:, :, None, :]
    ratio = jnp.log(wh[:, None, :, :] / wh[:, :, None, :])
    lo = jnp.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    hi = jnp.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = jnp.prod(jnp.maximum(hi - lo, 0.0), axis=-1)
    area = jnp.prod(wh, axis=-1)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter)
    return jnp.concatenate([offset, ratio, iou[..., None]], axis=-1)


class GPIStep(nn.Module):
    """One GPI step on dense tensors: object logits [B, O, C+1], pair logits [B, O, O, P+1]
    -> the refined pair of them."""

    hidden: int
    embed_dim: int
    dropout: float = 0.0
    order_dependent: bool = False  # the test's broken variant: adds each object's slot index

    @nn.compact
    def __call__(self, obj_logits, rel_logits, boxes, mask, image_sizes, geometry, train):
        b, o, c1 = obj_logits.shape
        p1 = rel_logits.shape[-1]
        drop = nn.Dropout(self.dropout, deterministic=not train)
        obj_p = nn.softmax(obj_logits, axis=-1)
        top = jnp.argmax(obj_logits[..., 1:], axis=-1) + 1
        top_p = jnp.take_along_axis(obj_p, top[..., None], axis=-1)
        z = [nn.Embed(c1, self.embed_dim, name="class_embed")(top) * top_p,
             nn.log_softmax(obj_logits, axis=-1),
             box_features(boxes, mask, image_sizes, top_p[..., 0])]
        if self.order_dependent:
            z.append(jnp.broadcast_to(jnp.arange(o, dtype=jnp.float32)[None, :, None], (b, o, 1)))
        z = jnp.concatenate(z, axis=-1)
        rel_p = nn.softmax(rel_logits, axis=-1)
        pred = jnp.argmax(rel_logits[..., 1:], axis=-1) + 1
        pred_p = jnp.take_along_axis(rel_p, pred[..., None], axis=-1)
        r = jnp.concatenate([nn.log_softmax(rel_logits, axis=-1),
                             nn.Embed(p1, self.embed_dim, name="predicate_embed")(pred) * pred_p,
                             geometry], axis=-1)
        z_i = jnp.broadcast_to(z[:, :, None, :], (b, o, o, z.shape[-1]))
        z_j = jnp.broadcast_to(z[:, None, :, :], (b, o, o, z.shape[-1]))
        triple = drop(jnp.concatenate([z_j, z_i, r], axis=-1))
        pair_mask = (mask[:, :, None] & mask[:, None, :] & ~jnp.eye(o, dtype=bool)[None])
        phi = nn.Dense(self.hidden, name="phi")(triple)
        w = masked_softmax(nn.Dense(self.hidden, name="phi_attention")(triple),
                           pair_mask[..., None], axis=2)
        s = jnp.sum(w * phi, axis=2)  # [B, O, H]
        node = jnp.concatenate([z, s], axis=-1)
        alpha = nn.Dense(self.hidden, name="alpha")(node)
        wg = masked_softmax(nn.Dense(self.hidden, name="alpha_attention")(node),
                            mask[..., None], axis=1)
        g = jnp.sum(wg * alpha, axis=1)  # [B, H]

        def rho(x, out, name):
            for k in range(3):
                x = drop(nn.relu(nn.Dense(self.hidden, name=f"{name}_{k}")(x)))
            delta = nn.Dense(out, kernel_init=nn.initializers.zeros, name=f"{name}_out")(x)
            gate = 2 * nn.sigmoid(nn.Dense(out if name == "rho_ent" else 1,
                                           kernel_init=nn.initializers.zeros,
                                           name=f"{name}_gate")(x))
            return delta, gate

        g_obj = jnp.broadcast_to(g[:, None, :], (b, o, g.shape[-1]))
        d_obj, gate_obj = rho(jnp.concatenate([z, g_obj, s], axis=-1), c1, "rho_ent")
        g_pair = jnp.broadcast_to(g[:, None, None, :], (b, o, o, g.shape[-1]))
        d_rel, gate_rel = rho(jnp.concatenate([r, z_j, z_i, g_pair], axis=-1), p1, "rho_rel")
        return d_obj + gate_obj * obj_logits, d_rel + gate_rel * rel_logits


class GPI(nn.Module):
    """`iterations` weight-shared GPI steps; padded objects and pairs come out as they went in
    (so nothing of theirs can reach a real output on a later step)."""

    hidden: int
    embed_dim: int
    iterations: int
    dropout: float = 0.0
    order_dependent: bool = False

    @nn.compact
    def __call__(self, obj_logits, rel_logits, boxes, mask, image_sizes, train=False):
        step = GPIStep(self.hidden, self.embed_dim, self.dropout, self.order_dependent,
                       name="step")
        geometry = pair_geometry(boxes)
        o = mask.shape[1]
        pair_mask = mask[:, :, None] & mask[:, None, :] & ~jnp.eye(o, dtype=bool)[None]
        for _ in range(self.iterations):  # weights shared; a few steps, not a loop over boxes
            new_obj, new_rel = step(obj_logits, rel_logits, boxes, mask, image_sizes, geometry,
                                    train)
            obj_logits = jnp.where(mask[..., None], new_obj, obj_logits)
            rel_logits = jnp.where(pair_mask[..., None], new_rel, rel_logits)
        return obj_logits, rel_logits


class SGPModel(nn.Module):
    """A base relation model (params group `base`) refined by GPI (group `gpi`)."""

    base: nn.Module
    mode: str
    hidden: int
    embed_dim: int
    iterations: int
    dropout: float = 0.0
    train_base: bool = False
    order_dependent: bool = False

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        b, o = inputs.box_mask.shape
        subj, obj = grid_pairs(o)
        grid = jnp.broadcast_to(jnp.stack([subj, obj], -1)[None], (b, len(subj), 2))
        grid_mask = inputs.box_mask[:, subj] & inputs.box_mask[:, obj]
        base = self.base(inputs.replace(pairs=grid.astype(jnp.int32), pair_mask=grid_mask),
                         train and self.train_base)
        obj_logits = base.obj_logits.astype(jnp.float32)
        if self.mode == "predcls":  # the given classes, as the base's PredCls reports them
            obj_logits = jnp.log(jnp.clip(nn.one_hot(inputs.labels, obj_logits.shape[-1]),
                                          EPS, 1.0))
        p1 = base.rel_logits.shape[-1]
        dense = jnp.zeros((b, o, o, p1), jnp.float32).at[:, subj, obj].set(
            base.rel_logits.astype(jnp.float32))
        obj_logits, dense = GPI(self.hidden, self.embed_dim, self.iterations, self.dropout,
                                self.order_dependent, name="gpi")(
            obj_logits, dense, inputs.boxes, inputs.box_mask, inputs.image_sizes, train)
        bi = jnp.arange(b)[:, None]
        rel_logits = dense[bi, inputs.pairs[..., 0], inputs.pairs[..., 1]]
        return ModelOutputs(obj_logits=obj_logits, rel_logits=rel_logits, aux=base.aux)


def build(model_config: Any, ctx: registry.BuildContext, order_dependent: bool = False
          ) -> SGPModel:
    opt = lambda key: registry.option(model_config, key, SPEC)  # noqa: E731
    base_config = base_section(model_config)
    return SGPModel(base=ctx.build_model(base_config, ctx.mode), mode=ctx.mode,
                    hidden=int(opt("gpi_dim")), embed_dim=int(opt("embed_dim")),
                    iterations=int(opt("iterations")), dropout=float(opt("gpi_dropout")),
                    train_base=bool(opt("train_base")), order_dependent=order_dependent)


def base_section(model_config: Any) -> Any:
    """The base model's config section: `bases[base]`, or a clear error."""
    name = str(registry.option(model_config, "base", SPEC))
    bases = registry.option(model_config, "bases", SPEC) or {}
    if name == SPEC.name:
        raise ValueError("config.model.base='sgp': SGP refines another model's outputs")
    if name not in bases:
        raise ValueError(f"config.model.base={name!r}: expected one of "
                         f"{', '.join(sorted(bases))} (config.model.bases)")
    return bases[name]


def complete_config(config: ml_collections.ConfigDict) -> None:
    """Before a run trains: with `model.base_run` (a finished run of the base model), the base's
    config section becomes that run's, the `sgp` stage restores the base's parameters from it,
    the base's own stages are dropped, and SGDet takes that run's detector unless one is set;
    `model.train_base` adds the base to the stage's trainable groups. A base with auxiliary
    networks (MSDN's region RPN) gets their stages (see `add_auxiliary_stages`)."""
    m = config.model
    name = str(m.base)
    run = str(m.get("base_run", "") or "")
    stage = config.train.stages[STAGE]
    add_auxiliary_stages(config, run)
    if run:
        path = os.path.join(run, "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                whole = json.load(f)
            saved = whole["model"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"config.model.base_run={run!r}: cannot read the base run's model "
                             f"config from {path} ({e})") from None
        if saved.get("name") != name:
            raise ValueError(f"config.model.base_run={run!r}: {path} is a run of model "
                             f"{saved.get('name')!r}, not of config.model.base={name!r}")
        differ = [f"{sec}.{key} {whole.get(sec, {}).get(key)!r} there, {config[sec][key]!r} here"
                  for sec, key in SAME_AS_BASE
                  if whole.get(sec, {}).get(key) != config[sec].get(key)]
        if differ:
            raise ValueError(f"config.model.base_run={run!r}: the base was trained on other data "
                             f"or canvases ({'; '.join(differ)}); set them as there")
        m.bases[name] = ml_collections.ConfigDict(saved)
        stage.restore_from = run
        stage.restore_into = BASE_GROUP
        stage.restore_groups = ""
        kept = [s for s in str(config.train.stage_order).split(",") if s.strip()
                and (s.strip() == STAGE or config.train.stages[s.strip()].kind != "relation")]
        config.train.stage_order = ",".join(kept)
        if not str(m.detector.get("checkpoint", "") or ""):  # SGDet on the base's boxes
            theirs = str(saved.get("detector", {}).get("checkpoint", "") or "")
            if theirs:
                m.detector.checkpoint = theirs
            elif os.path.isdir(os.path.join(run, "checkpoints", "detector")):
                m.detector.checkpoint = run
    if bool(m.get("train_base", False)):
        groups = [g.strip() for g in str(stage.trainable).split(",") if g.strip()]
        if BASE_GROUP not in groups:
            stage.trainable = ",".join(groups + [BASE_GROUP])


def add_auxiliary_stages(config: ml_collections.ConfigDict, run: str) -> None:
    """The stages of the base's auxiliary networks (configs/sgp.py copies them from the bases'
    configs, e.g. MSDN's `regions`) join the stage order after the detector; with a base run
    they train nothing and load the network from it (restore-only stages), so SGDet reads the
    base's own region proposals."""
    order = [s.strip() for s in str(config.train.stage_order).split(",") if s.strip()]
    for aux in registry.spec_for(config.model).auxiliary:
        names = [n for n, st in config.train.stages.items() if st.get("kind", "") == aux.kind]
        if not names:
            raise ValueError(f"config.model.base={str(config.model.base)!r}: its auxiliary "
                             f"network '{aux.group}' trains in a stage of kind '{aux.kind}', "
                             "and config.train.stages has none (configs/sgp.py copies the "
                             "base's)")
        if not any(n in order for n in names):
            at = next((i + 1 for i, n in enumerate(order) if n == "detector"), 0)
            order.insert(at, names[0])
        if run:
            for n in names:
                st = config.train.stages[n]
                st.num_steps, st.restore_from = 0, run
                st.restore_into, st.restore_groups = "", aux.group
    config.train.stage_order = ",".join(order)


class BaseView:
    """The run's Experiment as the base's own functions (auxiliary networks, SGDet hooks) read
    it: the same object, except that `config.model` is the base's section and `spec` its spec."""

    def __init__(self, exp: Any):
        self._exp = exp
        config = copy.deepcopy(exp.config)
        with config.unlocked():
            config.model = base_section(exp.config.model)
        self.config = config
        self.spec = registry.spec_for(config.model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._exp, name)


def resolve(model_config: Any) -> registry.ModelSpec:
    """SGP with its base's auxiliary networks, SGDet hooks and extra evaluations (MSDN: the
    region RPN and its stage, the region proposals and box heads in SGDet, region captions),
    each called with the base's view of the run (`BaseView`)."""
    base = registry.spec_for(base_section(model_config))
    if not (base.auxiliary or base.sgdet or base.evaluations):
        return SPEC
    aux = tuple(dataclasses.replace(
        a, init=lambda exp, *args, a=a: a.init(BaseView(exp), *args),
        make_loss=lambda exp, a=a: a.make_loss(BaseView(exp))) for a in base.auxiliary)
    sgdet = None if base.sgdet is None else (lambda exp: base.sgdet(BaseView(exp)))
    return dataclasses.replace(SPEC, auxiliary=aux, sgdet=sgdet,
                               sgdet_refines_boxes=base.sgdet_refines_boxes,
                               evaluations=base.evaluations, resolve=None)


SPEC = registry.register(registry.ModelSpec(
    name="sgp", build=build, param_groups=(BASE_GROUP, "gpi"),
    description="SGP (Herzig et al. 2018): a permutation-invariant GPI network refining any "
                "base model's object and predicate logits",
    config=dict(base="motifs", bases=None, base_run="", train_base=False, gpi_dim=500,
                embed_dim=64, iterations=2, gpi_dropout=0.1),
    complete_config=complete_config, resolve=resolve))
