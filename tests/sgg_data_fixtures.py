"""Tiny VG150 + VG-MSDN directories written with the project's writers, for TFDS/pipeline tests.

Image long sides divide 1024, and boxes are integer pixels, so the VG150 1024-scale encoding is
exact and the round trip can be compared with equality.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from data_pipelines.records import SceneGraphRecord

LABELS = ["__background__", "ball", "box", "cup", "dog"]
PREDICATES = ["__background__", "on", "left of", "right of", "near", "above"]
SIZES = [(64, 48), (48, 64), (32, 20), (128, 100), (64, 64), (16, 12)]


def make_records(image_dir: str, num: int, seed: int = 0, split: str = "train",
                 first_id: int = 1, max_boxes: int = 6) -> list[SceneGraphRecord]:
    """`num` records with random integer boxes, relations and region phrases; writes JPEGs."""
    rng = np.random.default_rng(seed)
    os.makedirs(image_dir, exist_ok=True)
    words = ["red", "blue", "ball", "on", "box", "small", "dog", "near", "cup"]
    out = []
    for k in range(num):
        image_id = first_id + k
        w, h = SIZES[(image_id - 1) % len(SIZES)]
        g = int(rng.integers(2, max_boxes + 1))
        x1 = rng.integers(0, w - 2, g)
        y1 = rng.integers(0, h - 2, g)
        x2 = np.minimum(x1 + rng.integers(2, w, g), w)
        y2 = np.minimum(y1 + rng.integers(2, h, g), h)
        boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
        nr = int(rng.integers(1, 2 * g + 1))
        s = rng.integers(0, g, nr)
        o = (s + rng.integers(1, g, nr)) % g  # never a self-relation
        rels = np.stack([s, o, rng.integers(1, len(PREDICATES), nr)], 1).astype(np.int32)
        nq = int(rng.integers(0, 3))
        rq = boxes[rng.integers(0, g, nq)] if nq else np.zeros((0, 4), np.float32)
        phrases = [[str(wd) for wd in rng.choice(words, int(rng.integers(3, 9)))]
                   for _ in range(nq)]
        path = os.path.join(image_dir, f"{image_id}.jpg")
        pix = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pix).save(path, quality=90)
        out.append(SceneGraphRecord(
            image_id=image_id, image_path=path, width=w, height=h, boxes=boxes,
            labels=rng.integers(1, len(LABELS), g).astype(np.int32), relations=rels,
            region_boxes=rq.astype(np.float32), region_phrases=phrases, split=split))
    return out


def make_vg150_dir(root: str, num_val: int = 2, num_train: int = 8, num_test: int = 3,
                   seed: int = 0, with_msdn: bool = True) -> dict[str, list[SceneGraphRecord]]:
    """Writes a VG150 directory (and VG-MSDN json in root/msdn) and returns the records by split."""
    from data_pipelines.vg150 import write_vg150
    from data_pipelines.vg_msdn import write_vg_msdn
    image_dir = os.path.join(root, "VG_100K")
    recs = {"val": make_records(image_dir, num_val, seed, "val", 1),
            "train": make_records(image_dir, num_train, seed + 1, "train", 1 + num_val),
            "test": make_records(image_dir, num_test, seed + 2, "test",
                                 1 + num_val + num_train)}
    everything = recs["val"] + recs["train"] + recs["test"]
    write_vg150(root, everything, LABELS, PREDICATES)
    if with_msdn:
        write_vg_msdn(os.path.join(root, "msdn"), everything, LABELS, PREDICATES)
    return recs
