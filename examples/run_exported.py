"""Runs a scene graph model exported by `python -m sgg_jax.export` on images, with NumPy,
Pillow and JAX only (no sgg_jax), and prints each image's top triplets.

    python examples/run_exported.py imp_sgdet.sggx photo.jpg [more.jpg ...] [--top 10]
        [--json out.json]

SGDet exports only (the model finds the objects). The image is prepared as the file's `meta`
says (the training pipeline's letterbox; JPEGs are decoded at reduced size by libjpeg's draft
mode first, as the pipeline does; EXIF orientation is not applied here). Triplets follow the
graph constraint: each pair of detections keeps its best predicate, scored predicate x subject
x object.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from jax import export
from PIL import Image


def load_exported(path: str):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode("utf-8"))
        return export.deserialize(bytearray(z["exported"].tobytes())), meta


def letterbox(path: str, size: int) -> tuple[np.ndarray, float, int, int]:
    """(canvas [S, S, 3] uint8, scale, content h, content w)."""
    with Image.open(path) as im:
        w, h = im.size
        scale = size / max(w, h)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
        if im.format == "JPEG":
            im.draft("RGB", (tw, th))
        im = im.convert("RGB")
        if im.size != (tw, th):
            im = im.resize((tw, th), Image.BILINEAR)
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[:th, :tw] = np.asarray(im)
    return canvas, scale, th, tw


def top_triplets(out: dict, b: int, scale: float, meta: dict, top: int) -> list[dict]:
    valid = out["pair_mask"][b] & out["box_mask"][b][out["pairs"][b]].all(-1)
    pairs = out["pairs"][b][valid]
    fg = out["rel_scores"][b][valid][:, 1:].astype(np.float64)
    pred = fg.argmax(1) + 1
    pred_score = fg[np.arange(len(pred)), pred - 1]
    obj = out["scores"][b].astype(np.float64)
    score = obj[pairs[:, 0]] * obj[pairs[:, 1]] * pred_score
    names, preds = meta["class_names"], meta["predicate_names"]
    boxes, labels = out["boxes"][b] / scale, out["labels"][b]
    result = []
    for k in np.argsort(-score, kind="stable")[:top]:
        s, o = pairs[k]
        result.append(dict(subject=names[labels[s]], subject_box=boxes[s].round(2).tolist(),
                           predicate=preds[pred[k]], predicate_id=int(pred[k]),
                           object=names[labels[o]], object_box=boxes[o].round(2).tolist(),
                           score=float(score[k])))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    fn, meta = load_exported(args.model)
    if meta["mode"] != "sgdet" or len(meta["inputs"]) != 2:
        raise SystemExit(f"{args.model}: this example runs SGDet exports whose detector reads "
                         f"the model's canvas (mode {meta['mode']!r}, inputs "
                         f"{[i['name'] for i in meta['inputs']]})")
    batch, size = meta["batch"], meta["image_size"]
    names = [o["name"] for o in meta["outputs"]]
    results = {}
    for start in range(0, len(args.images), batch):
        paths = args.images[start:start + batch]
        boxed = [letterbox(p, size) for p in paths]
        boxed += [boxed[-1]] * (batch - len(boxed))  # pad the last call
        images = np.stack([c for c, _, _, _ in boxed])
        sizes = np.array([[th, tw] for _, _, th, tw in boxed], np.int32)
        out = {n: np.asarray(v) for n, v in zip(names, fn.call(images, sizes))}
        for b, path in enumerate(paths):
            results[path] = top_triplets(out, b, boxed[b][1], meta, args.top)
            print(path)
            for t in results[path]:
                print(f"  {t['score']:.4f}  {t['subject']} {t['predicate']} {t['object']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
