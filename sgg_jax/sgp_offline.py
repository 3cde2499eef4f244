"""`python -m sgg_jax.sgp_offline`: SGP trained and evaluated on a base run's saved predictions,
without images or the base model (as the original SGP trained on precomputed outputs).

    # the base's raw outputs on the training and test splits (PredCls or SGCls):
    python -m sgg_jax.main --config configs/motifs.py --mode eval --workdir runs/motifs \\
        --config.eval.split=train --config.eval.modes=sgcls \\
        --config.eval.save_predictions=True --config.eval.save_logits=True
    (the same with --config.eval.split=test)
    # GPI on them:
    python -m sgg_jax.sgp_offline --config configs/sgp.py \\
        --train runs/motifs/predictions/train_sgcls.h5 \\
        --test runs/motifs/predictions/test_sgcls.h5 --workdir runs/sgp_offline

GPI's sizes, the `sgp` stage's optimizer and steps, the batch size, the pair sampling and the
losses come from the config (`--config.key=value` overrides, as for sgg_jax.main). Each image
is what the base saw: its first `max_objects` boxes (the file's metadata), their object
logits, and the predicate logits of every ordered pair of them. The training step samples
pairs and computes the losses with the same functions as the online `sgp` stage; evaluation
scores the refined logits with the same post-processing and evaluator, so for the same base
outputs and GPI parameters the results equal the online path's (tests/test_sgp_offline.py).
Zero-shot triplets are those absent from the training file's ground truth.

Writes `<workdir>/gpi_params.msgpack` (flax serialization, not pickle), `results.json` (as a
run's) and prints the results tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from sgg_jax.evaluation.prediction_file import PredictionFileError, read_predictions

MODES = ("predcls", "sgcls")
SAME_META = ("dataset", "num_classes", "num_predicates", "idx_to_label", "idx_to_predicate",
             "mode", "max_objects")


@dataclasses.dataclass
class SavedSplit:
    """A predictions file with logits, per image: what the base saw and the ground truth."""

    path: str
    mode: str
    max_objects: int
    num_classes: int
    num_predicates: int
    metadata: dict
    image_ids: np.ndarray
    images: list[dict]  # obj_logits [S,C+1], boxes [S,4], labels [S], pairs [M,2],
    # rel_logits [M,P+1], relations [R,3] among the S boxes, image_size [2]
    ground_truth: dict[int, dict]  # image id -> the full ground truth (evaluator input)


def load_saved(path: str) -> SavedSplit:
    """Reads and checks a predictions file written with `eval.save_logits` (PredCls / SGCls)."""
    f = read_predictions(path)
    meta = f.metadata
    if not f.predictions or "obj_logits" not in f.predictions[0]:
        raise PredictionFileError(path, "has no object / predicate logits: write it with "
                                  "--config.eval.save_predictions=True "
                                  "--config.eval.save_logits=True", field="predictions/obj_logits")
    if f.groundtruths is None:
        raise PredictionFileError(path, "has no ground truth (training needs it)",
                                  field="groundtruth")
    mode = str(meta.get("mode", ""))
    if mode not in MODES:
        raise PredictionFileError(path, f"mode {mode!r}: SGP trains on PredCls or SGCls outputs",
                                  field="metadata")
    if int(meta.get("max_objects", 0) or 0) < 2:
        raise PredictionFileError(path, "metadata has no max_objects (how many boxes the base "
                                  "saw)", field="metadata")
    o = int(meta["max_objects"])
    images, ground_truth = [], {}
    for image_id, pred, gt in zip(f.image_ids, f.predictions, f.groundtruths):
        image_id = int(image_id)
        seen = min(len(gt["labels"]), o)
        if not np.allclose(pred["boxes"][:seen], gt["boxes"][:seen], atol=1e-3):
            raise PredictionFileError(path, "the predicted boxes are not the ground-truth boxes "
                                      "(an SGDet file?)", image_id, "predictions/boxes")
        pairs = pred["rel_pairs"].astype(np.int64)
        if pairs.size and pairs.max() >= seen:
            raise PredictionFileError(path, f"a pair refers to box {int(pairs.max())} beyond the "
                                      f"{seen} the base saw", image_id, "predictions/rel_pairs")
        rel = gt["relations"].astype(np.int64)
        rel = rel[(rel[:, 0] < seen) & (rel[:, 1] < seen)] if rel.size else rel.reshape(0, 3)
        images.append(dict(obj_logits=pred["obj_logits"][:seen], boxes=gt["boxes"][:seen],
                           labels=gt["labels"][:seen].astype(np.int64), pairs=pairs,
                           rel_logits=pred["rel_logits"], relations=rel,
                           image_size=pred["image_size"]))
        ground_truth[image_id] = dict(image_id=image_id, boxes=gt["boxes"].astype(np.float64),
                                      labels=gt["labels"].astype(np.int64),
                                      relations=gt["relations"].astype(np.int64))
    return SavedSplit(path=path, mode=mode, max_objects=o, num_classes=f.num_classes,
                      num_predicates=f.num_predicates, metadata=meta, image_ids=f.image_ids,
                      images=images, ground_truth=ground_truth)


def check_compatible(train: SavedSplit, test: SavedSplit) -> None:
    """The two files come from the same dataset, base mode and input limits."""
    differ = [f"{k} {train.metadata.get(k)!r} in {train.path}, {test.metadata.get(k)!r} here"
              for k in SAME_META if train.metadata.get(k) != test.metadata.get(k)]
    if differ:
        raise PredictionFileError(test.path, "does not fit the training file: "
                                  + "; ".join(differ), field="metadata")


def make_batch(split: SavedSplit, rows: Sequence[int], max_relations: int) -> dict:
    """Padded host arrays of images `rows` (a row of -1 is an empty padding image)."""
    o, c1, p1 = split.max_objects, split.num_classes + 1, split.num_predicates + 1
    b = len(rows)
    out = dict(obj_logits=np.zeros((b, o, c1), np.float32),
               rel_logits=np.zeros((b, o, o, p1), np.float32), boxes=np.zeros((b, o, 4), np.float32),
               box_mask=np.zeros((b, o), bool), labels=np.zeros((b, o), np.int32),
               relations=np.zeros((b, max_relations, 3), np.int32),
               rel_mask=np.zeros((b, max_relations), bool),
               image_sizes=np.ones((b, 2), np.float32), image_ids=np.full((b,), -1, np.int64))
    for k, row in enumerate(rows):
        if row < 0:
            continue
        im = split.images[row]
        s = len(im["labels"])
        out["obj_logits"][k, :s] = im["obj_logits"]
        out["boxes"][k, :s] = im["boxes"]
        out["box_mask"][k, :s] = True
        out["labels"][k, :s] = im["labels"]
        if len(im["pairs"]):
            out["rel_logits"][k, im["pairs"][:, 0], im["pairs"][:, 1]] = im["rel_logits"]
        r = im["relations"][:max_relations]
        out["relations"][k, :len(r)] = r
        out["rel_mask"][k, :len(r)] = True
        out["image_sizes"][k] = im["image_size"]
        out["image_ids"][k] = int(split.image_ids[row])
    return out


def build_gpi(config: Any):
    from sgg_jax.models import sgp

    m = config.model
    return sgp.GPI(hidden=int(m.gpi_dim), embed_dim=int(m.embed_dim),
                   iterations=int(m.iterations), dropout=float(m.gpi_dropout))


def refine(gpi: Any, params: Any, batch: dict, mode: str, train: bool = False,
           rng: Any = None):
    """GPI on a saved batch -> (object logits, dense predicate logits), as `SGPModel` refines
    its base's outputs (PredCls: the given classes as the object input)."""
    import flax.linen as nn
    import jax.numpy as jnp

    obj = jnp.asarray(batch["obj_logits"])
    if mode == "predcls":
        obj = jnp.log(jnp.clip(nn.one_hot(jnp.asarray(batch["labels"]), obj.shape[-1]),
                               1e-6, 1.0))
    return gpi.apply({"params": params}, obj, jnp.asarray(batch["rel_logits"]),
                     jnp.asarray(batch["boxes"]), jnp.asarray(batch["box_mask"]),
                     jnp.asarray(batch["image_sizes"]), train,
                     rngs={"dropout": rng} if train else None)


def make_train_step(gpi: Any, tx: Any, config: Any, mode: str):
    """(params, opt_state, batch, rng) -> (params, opt_state, metrics): the online stage's
    pair sampling and loss functions on GPI's refined logits."""
    import jax
    import jax.numpy as jnp
    import optax

    from sgg_jax import losses
    from sgg_jax.relation_sampling import sample_relations_batch

    s = config.sampling

    def loss_fn(params, batch, rng):
        sample_rng, dropout_rng = jax.random.split(rng)
        pairs, pair_labels, pair_mask = sample_relations_batch(
            sample_rng, batch["boxes"], batch["box_mask"], batch["labels"], batch["relations"],
            batch["rel_mask"], num_rels=int(s.num_rels), fg_fraction=float(s.fg_fraction),
            must_overlap=bool(s.must_overlap))
        obj, dense = refine(gpi, params, batch, mode, train=True, rng=dropout_rng)
        bi = jnp.arange(dense.shape[0])[:, None]
        rel = dense[bi, pairs[..., 0], pairs[..., 1]]
        obj_loss = float(config.loss.obj_weight) * losses.object_loss(
            obj, batch["labels"], batch["box_mask"])
        rel_loss = float(config.loss.rel_weight) * losses.edge_loss(
            rel, pair_labels, pair_mask, kind=str(config.loss.edge))
        return obj_loss + rel_loss, dict(object_loss=obj_loss, relation_loss=rel_loss)

    def step(params, opt_state, batch, rng):
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, dict(loss=loss, **parts)

    return jax.jit(step)


def batches(split: SavedSplit, batch_size: int, max_relations: int, seed: int
            ) -> Iterator[dict]:
    """Endless shuffled training batches (a new order every epoch)."""
    rng = np.random.default_rng(seed)
    n = len(split.images)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            rows = list(order[i:i + batch_size])
            rows += [-1] * (batch_size - len(rows))
            yield make_batch(split, rows, max_relations)


def train(config: Any, split: SavedSplit, log_every: int = 20) -> Any:
    """GPI trained on a saved training split; returns its parameters."""
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from sgg_jax.training import optim

    gpi = build_gpi(config)
    stage = config.train.stages.sgp
    bs = int(config.input.batch_size)
    max_rel = int(config.input.max_relations)
    data = batches(split, bs, max_rel, int(config.seed))
    first = next(data)
    params = gpi.init(jax.random.key(int(config.seed)), jnp.asarray(first["obj_logits"]),
                      jnp.asarray(first["rel_logits"]), jnp.asarray(first["boxes"]),
                      jnp.asarray(first["box_mask"]), jnp.asarray(first["image_sizes"]))["params"]
    tx = optim.base_optimizer(stage, config.train)
    opt_state = tx.init(params)
    step = make_train_step(gpi, tx, config, split.mode)
    rng = jax.random.key(int(config.seed) + 1)
    batch = first
    with tqdm(range(int(stage.num_steps)), desc="train[sgp offline]", unit="step",
              dynamic_ncols=True) as bar:
        for i in bar:
            params, opt_state, metrics = step(params, opt_state, batch,
                                              jax.random.fold_in(rng, i))
            if i % log_every == 0:
                bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
            batch = next(data)
    return params


def evaluate(config: Any, params: Any, split: SavedSplit, triplet_counts: np.ndarray,
             zero_shot: np.ndarray | None = None) -> dict[str, Any]:
    """The refined predictions of every image through the online evaluation's post-processing
    and evaluators (results laid out as a run's results.json)."""
    import jax
    import jax.numpy as jnp

    from sgg_jax import relation_sampling
    from sgg_jax.models import postprocess
    from sgg_jax.models.interface import ModelOutputs
    from sgg_jax.training import eval_loop, reporting

    gpi = build_gpi(config)
    mode = split.mode
    protocols = reporting.parse_protocols(config.eval.get("protocols", "motifs,msdn"))
    evaluators = eval_loop.make_evaluators(
        mode, protocols, split.num_predicates, ks=tuple(config.eval.ks),
        zero_shot_triplets=zero_shot, triplet_counts=triplet_counts)

    @jax.jit
    def score(params, batch):
        obj, dense = refine(gpi, params, batch, mode)
        o = batch["box_mask"].shape[1]
        pairs, pair_mask = relation_sampling.all_pairs(batch["box_mask"], o * (o - 1))
        bi = jnp.arange(dense.shape[0])[:, None]
        outputs = ModelOutputs(obj_logits=obj, rel_logits=dense[bi, pairs[..., 0], pairs[..., 1]])
        scored = postprocess.predict_scores(outputs, mode, labels=batch["labels"])
        return dict(labels=scored["obj_labels"], scores=scored["obj_scores"], pairs=pairs,
                    pair_mask=pair_mask, rel_scores=scored["rel_scores"])

    bs = int(config.input.eval_batch_size)
    n = len(split.images)
    for i in range(0, n, bs):
        rows = list(range(i, min(i + bs, n)))
        rows += [-1] * (bs - len(rows))
        host = make_batch(split, rows, int(config.input.max_relations))
        scored = jax.device_get(score(params, {k: v for k, v in host.items()
                                               if k != "image_ids"}))
        view = types.SimpleNamespace(images=np.zeros((bs, 1, 1, 3), np.uint8),
                                     image_ids=host["image_ids"], box_mask=host["box_mask"],
                                     labels=host["labels"], scales=np.ones(bs, np.float32))
        for gt, pred, _ in eval_loop.batch_to_examples(view, scored, split.ground_truth,
                                                        mode == "predcls"):
            for evaluator in evaluators.values():
                evaluator.add(gt, pred)
    results: dict[str, Any] = {}
    for (protocol, m), evaluator in evaluators.items():
        reporting.store_metrics(results, protocol, m, evaluator.compute())
    return results


def _triplets(split: SavedSplit) -> np.ndarray:
    """[R, 3] (subject class, predicate, object class) of every ground-truth relation."""
    rows = [np.stack([gt["labels"][gt["relations"][:, 0]], gt["relations"][:, 2],
                      gt["labels"][gt["relations"][:, 1]]], -1)
            for gt in split.ground_truth.values() if gt["relations"].size]
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)


def triplet_counts_of(split: SavedSplit) -> np.ndarray:
    """[Z, 4] (subject, predicate, object, count) of the training file's ground-truth
    triplets (the few-shot buckets)."""
    uniq, counts = np.unique(_triplets(split), axis=0, return_counts=True)
    return np.concatenate([uniq, counts[:, None]], axis=1).astype(np.int64)


def zero_shot_of(train: SavedSplit, test: SavedSplit) -> np.ndarray:
    """[Z, 3] test triplets that no training-file relation has."""
    seen = {tuple(t) for t in _triplets(train).tolist()}
    unseen = {tuple(t) for t in _triplets(test).tolist()} - seen
    return np.asarray(sorted(unseen), np.int64).reshape(-1, 3)


def main(argv: Sequence[str] | None = None) -> int:
    from sgg_jax import api
    from sgg_jax.io_utils import write_json_atomic
    from sgg_jax.training import reporting

    ap = argparse.ArgumentParser(prog="python -m sgg_jax.sgp_offline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/sgp.py")
    ap.add_argument("--train", required=True, help="the base's training-split predictions (.h5)")
    ap.add_argument("--test", required=True, help="the base's evaluation-split predictions")
    ap.add_argument("--workdir", required=True)
    args, rest = ap.parse_known_args(argv)
    try:
        overrides = {}
        for item in rest:
            if not item.startswith("--config.") or "=" not in item:
                raise ValueError(f"unknown argument {item!r} (expected --config.KEY=VALUE)")
            key, value = item[len("--config."):].split("=", 1)
            overrides[key] = value
        config = api.get_config(args.config)
        for key, value in overrides.items():
            api.set_field(config, key, _parse(config, key, value))
        train_split = load_saved(args.train)
        test_split = load_saved(args.test)
        check_compatible(train_split, test_split)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    params = train(config, train_split)
    results = evaluate(config, params, test_split, triplet_counts_of(train_split),
                       zero_shot_of(train_split, test_split))
    os.makedirs(args.workdir, exist_ok=True)
    import flax.serialization
    import jax

    blob = flax.serialization.msgpack_serialize(jax.device_get(params))
    tmp = os.path.join(args.workdir, ".gpi_params.msgpack.tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, os.path.join(args.workdir, "gpi_params.msgpack"))
    results["sgp_offline"] = dict(train=os.path.abspath(args.train),
                                  test=os.path.abspath(args.test), mode=test_split.mode,
                                  base_model=test_split.metadata.get("model"))
    write_json_atomic(os.path.join(args.workdir, "results.json"), results)
    print(reporting.format_report(results, f"sgp (offline, base {test_split.metadata.get('model')})"))
    return 0


def _parse(config: Any, key: str, value: str) -> Any:
    """A command-line string as the type of the field it sets."""
    from sgg_jax.training import experiment

    current = experiment._field(config, key)
    if current is None:
        raise ValueError(f"config field {key!r} does not exist")
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        return type(current)(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
