"""grain input pipeline: TFDS array_record examples -> fixed-shape `Batch` (numpy).

Per example (in grain's read threads by default, see `DecodedSource`, or as a
`grain.transforms.Map`; either way inside each of `worker_count` worker processes):
  1. decode the stored JPEG with Pillow; for JPEG, `draft` lets libjpeg decode at 1/2, 1/4 or
     1/8 scale when the target is that much smaller (much faster, same final size);
  2. resize so the long side is `image_size` (bilinear; content size = round(original * scale))
     and paste at the top-left of a zeroed S x S canvas (padding bottom / right);
  3. boxes (objects and caption regions) become `box * scale`, scale = S / max(width, height)
     of the original image, exactly as stated in `Batch.scales`;
  4. objects beyond `max_objects` are dropped (the first `max_objects` are kept) together with
     every relation that touches a dropped object; then relations beyond `max_relations` and
     regions beyond `max_regions` are dropped (first ones kept); region phrases longer than
     `max_phrase_len` tokens are cut and end with <end>. `count_truncation` reports how many.
Training only (a `grain.transforms.RandomMap`, seeded per record by grain, so the stream is
deterministic for a seed and resumes exactly from a checkpointed iterator state):
  5. with probability `flip_prob`, a horizontal flip of the content: x1' = W - x2, x2' = W - x1
     with W the resized content width (continuous pixel-edge coordinates: a box covering pixel
     columns [x1, x2) covers [W - x2, W - x1) after the flip), and predicates swapped by
     `flip_predicate_map` (e.g. "left of" <-> "right of");
  6. optionally (`filter_duplicate_rels`) one randomly chosen predicate per ordered pair, as
     neural-motifs does per sample during training.
Then `grain.transforms.Batch` with a batch function that stacks into `Batch` and pads a short
final batch with empty images (image_ids -1, all masks False).
"""
from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from data_pipelines.batch import Batch
from data_pipelines.errors import DataFormatError

END_TOKEN = 2


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How batches are made (sizes are per process).

    flip_predicate_map: pairs (a, b) of predicate ids swapped by a horizontal flip.
    num_epochs: None repeats forever (training); eval loaders always make one epoch.
    """

    image_size: int = 256
    # The detector's canvas (0 = the same): a detector trained at another size (a reused
    # detector run) sees the image letterboxed at its own size (`Batch.detector_images`).
    detector_image_size: int = 0
    max_objects: int = 12
    max_relations: int = 32
    max_regions: int = 8
    max_phrase_len: int = 12
    batch_size: int = 16
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2  # grain ReadOptions: threads reading (and, by default, decoding)
    read_prefetch: int = 64  # records ahead; Pillow releases the GIL while decoding
    decode_in_read_threads: bool = True  # False: decode as a grain map op instead
    flip_prob: float = 0.0
    flip_predicate_map: tuple[tuple[int, int], ...] = ()
    filter_duplicate_rels: bool = False
    drop_remainder: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "InputConfig":
        """Builds from a mapping (e.g. an ml_collections ConfigDict), ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: d[k] for k in d.keys() if k in names}
        kw.update(overrides)
        if "flip_predicate_map" in kw:
            kw["flip_predicate_map"] = tuple(tuple(int(x) for x in p)
                                             for p in kw["flip_predicate_map"])
        return cls(**kw)


def flip_predicate_pairs(idx_to_predicate: Sequence[str],
                         pairs: Sequence[tuple[str, str]] = (("left of", "right of"),
                                                             ("to the left of",
                                                              "to the right of"))
                         ) -> tuple[tuple[int, int], ...]:
    """Predicate-id pairs to swap on a flip, for the name pairs present in this dataset."""
    idx = {n: i for i, n in enumerate(idx_to_predicate)}
    return tuple((idx[a], idx[b]) for a, b in pairs if a in idx and b in idx)


def predicate_permutation(pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """[K] int32 lookup (K = largest id in `pairs` + 1): identity except each pair swapped.

    Predicates >= K are left unchanged by `flip_example`.
    """
    k = max([max(p) for p in pairs], default=0) + 1
    perm = np.arange(k, dtype=np.int32)
    seen: set[int] = set()
    for a, b in pairs:
        if a < 1 or b < 1 or a == b or a in seen or b in seen:
            raise ValueError(f"flip_predicate_map: pair ({a}, {b}) must be two distinct "
                             "predicate ids >= 1, each in at most one pair")
        seen.update((a, b))
        perm[a], perm[b] = b, a
    return perm


# --------------------------------------------------------------------------------------------
# Per-example transforms
# --------------------------------------------------------------------------------------------

def decode_resize(data: bytes, size: int) -> tuple[np.ndarray, float, int, int]:
    """Decodes an encoded image, resizes its long side to `size` and pads to size x size.

    Returns (canvas [S, S, 3] uint8, scale, content height, content width).
    """
    with Image.open(io.BytesIO(data)) as im:
        scale, tw, th = canvas_geometry(im.size, size)
        if im.format == "JPEG":
            im.draft("RGB", (tw, th))  # DCT-domain downscale; never below (tw, th)
        canvas = paste_on_canvas(im, size, tw, th)
    return canvas, scale, th, tw


def canvas_geometry(image_wh: tuple[int, int], size: int) -> tuple[float, int, int]:
    """(scale, content width, content height) of an image of `image_wh` on a size x size canvas."""
    w0, h0 = image_wh
    scale = size / max(w0, h0)
    return scale, max(1, round(w0 * scale)), max(1, round(h0 * scale))


def paste_on_canvas(im: Image.Image, size: int, tw: int, th: int) -> np.ndarray:
    """RGB-converts `im`, resizes it to (tw, th) (bilinear) and pads it to [size, size, 3] uint8."""
    im = im.convert("RGB")
    if im.size != (tw, th):
        im = im.resize((tw, th), Image.BILINEAR)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:th, :tw] = np.asarray(im)
    return canvas


def truncate_graph(labels: np.ndarray, relations: np.ndarray, max_objects: int,
                   max_relations: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Keeps the first max_objects objects and the relations among them (first max_relations).

    Returns (kept object count, kept relations, dropped objects, dropped relations).
    """
    g = min(len(labels), max_objects)
    keep = (relations[:, 0] < g) & (relations[:, 1] < g)
    rels = relations[keep][:max_relations]
    return g, rels, len(labels) - g, len(relations) - len(rels)


def _pad(x: np.ndarray, n: int, fill: Any = 0) -> np.ndarray:
    out = np.full((n,) + x.shape[1:], fill, x.dtype)
    out[:min(n, len(x))] = x[:n]
    return out


def fit_tokens(tokens: np.ndarray, q: int, length: int) -> np.ndarray:
    """[Q, L] int32 from stored [Q', T] tokens; cut phrases end with the <end> token."""
    out = np.zeros((q, length), np.int32)
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        return out
    tokens = tokens[:q]
    n, t = tokens.shape
    m = min(t, length)
    out[:n, :m] = tokens[:, :m]
    if t > length:
        cut = tokens[:, length:].any(axis=1)
        out[:n, length - 1] = np.where(cut, END_TOKEN, out[:n, length - 1])
    return out


def decode_example_image(ex: Mapping[str, Any], size: int
                         ) -> tuple[np.ndarray, float, int, int]:
    """`decode_resize` of a stored example's image; bytes that do not decode (a build damaged
    after it was written: the builder decodes every image once) raise DataFormatError naming
    the image, not an OSError from deep inside a loader thread."""
    try:
        return decode_resize(ex["image"], size)
    except (OSError, SyntaxError, ValueError) as e:
        name = ex.get("file_name", b"")
        raise DataFormatError(name.decode() if isinstance(name, bytes) else str(name), "image",
                              "stored image bytes Pillow can decode (the built dataset's copy "
                              "of this file is damaged: delete the build to rebuild it)",
                              " ".join(str(e).split()), image_id=int(ex["image_id"])) from e


@dataclasses.dataclass(frozen=True)
class DecodeAndPad(grain.transforms.Map):
    """TFDS example dict -> fixed-shape example dict (steps 1-4 of the module docstring)."""

    config: InputConfig

    def map(self, ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
        c = self.config
        canvas, scale, th, tw = decode_example_image(ex, c.image_size)
        labels = np.asarray(ex["labels"], np.int32).reshape(-1)
        rels = np.asarray(ex["relations"], np.int32).reshape(-1, 3)
        g, rels, _, _ = truncate_graph(labels, rels, c.max_objects, c.max_relations)
        boxes = np.asarray(ex["boxes"], np.float32).reshape(-1, 4)[:g] * np.float32(scale)
        rboxes = np.asarray(ex["region_boxes"], np.float32).reshape(-1, 4)[:c.max_regions]
        q = len(rboxes)
        detector = {}
        if c.detector_image_size and c.detector_image_size != c.image_size:
            det_canvas, _, dh, dw = decode_example_image(ex, c.detector_image_size)
            detector = dict(detector_images=det_canvas,
                            detector_image_sizes=np.array([dh, dw], np.int32))
        return dict(
            **detector,
            images=canvas,
            image_sizes=np.array([th, tw], np.int32),
            scales=np.float32(scale),
            image_ids=np.int32(ex["image_id"]),
            boxes=_pad(boxes, c.max_objects),
            labels=_pad(labels[:g], c.max_objects),
            box_mask=np.arange(c.max_objects) < g,
            relations=_pad(rels, c.max_relations),
            rel_mask=np.arange(c.max_relations) < len(rels),
            region_boxes=_pad(rboxes * np.float32(scale), c.max_regions),
            region_tokens=fit_tokens(ex["region_tokens"], c.max_regions, c.max_phrase_len),
            region_mask=np.arange(c.max_regions) < q,
        )


def _flip_canvas(canvas: np.ndarray, th: int, tw: int) -> np.ndarray:
    """The canvas with its [th, tw] content mirrored left-right (padding untouched)."""
    src = np.ascontiguousarray(canvas)
    img = src.copy()
    # Reverse whole pixels (one 3-byte item each) rather than a [H, W, 3] array: ~3x faster.
    pixel = np.dtype((np.void, src.shape[-1] * src.itemsize))
    img.view(pixel)[..., 0][:th, :tw] = src.view(pixel)[..., 0][:th, :tw][:, ::-1]
    return img


def flip_example(ex: dict[str, np.ndarray], perm: np.ndarray) -> dict[str, np.ndarray]:
    """Horizontal flip of a fixed-shape example: content, boxes, regions and predicates."""
    out = dict(ex)
    th, tw = (int(v) for v in ex["image_sizes"])
    out["images"] = _flip_canvas(ex["images"], th, tw)
    if "detector_images" in ex:
        dh, dw = (int(v) for v in ex["detector_image_sizes"])
        out["detector_images"] = _flip_canvas(ex["detector_images"], dh, dw)
    for key, mask in (("boxes", "box_mask"), ("region_boxes", "region_mask")):
        b = ex[key]
        flipped = np.stack([tw - b[:, 2], b[:, 1], tw - b[:, 0], b[:, 3]], axis=1)
        out[key] = np.where(ex[mask][:, None], flipped, b).astype(np.float32)
    rels = ex["relations"].copy()
    p = rels[:, 2]
    mapped = perm[np.minimum(p, len(perm) - 1)]
    rels[:, 2] = np.where(ex["rel_mask"] & (p < len(perm)), mapped, p)
    out["relations"] = rels
    return out


def one_predicate_per_pair(ex: dict[str, np.ndarray], rng: np.random.Generator
                           ) -> dict[str, np.ndarray]:
    """Keeps one random relation per ordered (subject, object) pair (NM training rule)."""
    n = int(ex["rel_mask"].sum())
    if n < 2:
        return ex
    rels = ex["relations"][:n]
    key = rels[:, 0].astype(np.int64) * 65536 + rels[:, 1]
    order = rng.permutation(n)  # random representative per pair
    _, first = np.unique(key[order], return_index=True)
    keep = np.sort(order[first])
    out = dict(ex)
    out["relations"] = _pad(rels[keep], len(ex["relations"]))
    out["rel_mask"] = np.arange(len(ex["rel_mask"])) < len(keep)
    return out


@dataclasses.dataclass(frozen=True)
class RandomAugment(grain.transforms.RandomMap):
    """Training-time flip and duplicate-relation sampling (steps 5-6), seeded by grain."""

    flip_prob: float
    perm: tuple[int, ...]
    filter_duplicate_rels: bool

    def random_map(self, ex: dict[str, np.ndarray], rng: np.random.Generator):
        if self.filter_duplicate_rels:
            ex = one_predicate_per_pair(ex, rng)
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            ex = flip_example(ex, np.asarray(self.perm, np.int32))
        return ex


@dataclasses.dataclass(frozen=True)
class StackPadded:
    """grain batch function: stacks examples into `Batch`, padding to `batch_size`."""

    batch_size: int

    def __call__(self, examples: Sequence[dict[str, np.ndarray]]) -> Batch:
        fields = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        n = len(examples)
        if n < self.batch_size:
            for k, v in fields.items():
                pad = np.zeros((self.batch_size - n,) + v.shape[1:], v.dtype)
                if k == "image_ids":
                    pad[:] = -1
                fields[k] = np.concatenate([v, pad])
        return Batch(**fields)


def empty_batch(config: InputConfig, batch_size: int | None = None) -> Batch:
    """An all-padding batch (image_ids -1, masks False) with the loader's shapes."""
    c, b = config, batch_size or config.batch_size
    detector = {}
    if c.detector_image_size and c.detector_image_size != c.image_size:
        d = c.detector_image_size
        detector = dict(detector_images=np.zeros((b, d, d, 3), np.uint8),
                        detector_image_sizes=np.zeros((b, 2), np.int32))
    return Batch(**detector,
        images=np.zeros((b, c.image_size, c.image_size, 3), np.uint8),
        image_sizes=np.zeros((b, 2), np.int32), scales=np.zeros((b,), np.float32),
        image_ids=np.full((b,), -1, np.int32),
        boxes=np.zeros((b, c.max_objects, 4), np.float32),
        labels=np.zeros((b, c.max_objects), np.int32),
        box_mask=np.zeros((b, c.max_objects), bool),
        relations=np.zeros((b, c.max_relations, 3), np.int32),
        rel_mask=np.zeros((b, c.max_relations), bool),
        region_boxes=np.zeros((b, c.max_regions, 4), np.float32),
        region_tokens=np.zeros((b, c.max_regions, c.max_phrase_len), np.int32),
        region_mask=np.zeros((b, c.max_regions), bool))


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DecodedSource:
    """A random-access source whose items are already decoded and padded (`DecodeAndPad`).

    Used as the grain data source, decoding runs in grain's read threads (in every worker):
    Pillow releases the GIL while it decodes, so decoding overlaps across threads and cores even
    with worker_count=0. Random augmentation stays a grain op (seeded per record).
    """

    source: Any
    config: InputConfig

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return DecodeAndPad(self.config).map(self.source[i])


def _decoding(source: Any, config: InputConfig) -> tuple[Any, list[Any]]:
    """(data source, leading ops): decode in read threads or as a grain map op."""
    if config.decode_in_read_threads:
        return DecodedSource(source, config), []
    return source, [DecodeAndPad(config)]


def _ensure_flags_parsed(config: InputConfig) -> None:
    """grain's worker processes read absl flags; outside an absl app, use their defaults."""
    if config.worker_count > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()


def _read_options(config: InputConfig) -> grain.ReadOptions:
    _ensure_flags_parsed(config)
    return grain.ReadOptions(num_threads=config.read_threads,
                             prefetch_buffer_size=config.read_prefetch)


def make_loader(source: Any, config: InputConfig, split: str = "train", *,
                shard_options: grain.sharding.ShardOptions | None = None,
                evaluation: bool = False) -> grain.DataLoader | "EvalLoader":
    """The loader for one split of a TFDS data source (`builder.as_data_source()[split]`).

    split "train": shuffled (if config.shuffle) by config.seed, flipped with flip_prob, repeated
    num_epochs times (None = forever); a `grain.DataLoader`, whose iterator's get_state() /
    set_state() (or `grain.checkpoint.CheckpointSave/Restore` with Orbax) resume the stream
    exactly. Any other split: an `EvalLoader` (one epoch, file order, no augmentation, last
    batch padded); `evaluation=True` makes one for the training split too (evaluating a model
    on its training images). `shard_options` defaults to `ShardByJaxProcess` (this process's
    shard); pass `grain.sharding.ShardOptions(i, n)` to read shard i of n explicitly.
    """
    if split != "train" or evaluation:
        return EvalLoader(source, config, shard_options=shard_options)
    shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    per_shard = len(source) // shard.shard_count
    if config.drop_remainder and per_shard < config.batch_size:
        raise ValueError(f"InputConfig.batch_size: {config.batch_size} is larger than this "
                         f"process's {per_shard} training images (of {len(source)} over "
                         f"{shard.shard_count} processes); no full batch could be made")
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=shard, shuffle=config.shuffle,
        num_epochs=config.num_epochs, seed=config.seed)
    perm = predicate_permutation(config.flip_predicate_map)
    source, ops = _decoding(source, config)
    if config.flip_prob > 0 or config.filter_duplicate_rels:
        ops.append(RandomAugment(float(config.flip_prob), tuple(int(x) for x in perm),
                                 bool(config.filter_duplicate_rels)))
    ops.append(grain.transforms.Batch(config.batch_size, drop_remainder=config.drop_remainder,
                                      batch_fn=StackPadded(config.batch_size)))
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops,
                            worker_count=config.worker_count,
                            worker_buffer_size=config.worker_buffer_size,
                            read_options=_read_options(config))


@dataclasses.dataclass(frozen=True)
class ShardSource:
    """Records [start, stop) of a random-access source, as a random-access source."""

    source: Any
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Any:
        return self.source[self.start + int(i)]


def contiguous_shard(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of shard `index` of `count` over n records; sizes differ by at most one."""
    return n * index // count, n * (index + 1) // count


class EvalLoader:
    """One pass over a split in file order, no augmentation; the last batch is padded.

    Shards are contiguous blocks of the file (every image is read by exactly one process; grain's
    IndexSampler drops the remainder even when asked not to). Every process yields the same
    number of batches (`num_batches`): a process that runs out first yields all-padding batches,
    so collective evaluation steps never wait on a process that has stopped.
    """

    def __init__(self, source: Any, config: InputConfig, *,
                 shard_options: grain.sharding.ShardOptions | None = None):
        if shard_options is None:
            import jax  # only for the process index / count
            shard_options = grain.sharding.ShardOptions(jax.process_index(), jax.process_count())
        self.config = config
        start, stop = contiguous_shard(len(source), shard_options.shard_index,
                                       shard_options.shard_count)
        self.source = ShardSource(source, start, stop)
        per_shard = math.ceil(len(source) / shard_options.shard_count)
        self.num_batches = math.ceil(per_shard / config.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        c = self.config
        source, ops = _decoding(self.source, c)
        sampler = grain.samplers.IndexSampler(
            num_records=len(self.source), shard_options=grain.sharding.NoSharding(),
            shuffle=False, num_epochs=1, seed=0)
        loader = grain.DataLoader(
            data_source=source, sampler=sampler,
            operations=ops + [grain.transforms.Batch(
                c.batch_size, drop_remainder=False, batch_fn=StackPadded(c.batch_size))],
            worker_count=c.worker_count, worker_buffer_size=c.worker_buffer_size,
            read_options=_read_options(c))
        n = 0
        for batch in loader:
            n += 1
            yield batch
        for _ in range(self.num_batches - n):
            yield empty_batch(c)


def count_truncation(source: Any, config: InputConfig) -> dict[str, int]:
    """How many objects / relations / regions the configured maxima drop over `source`.

    Reads every example once (no image decoding); use it to choose max_objects etc.
    """
    out = dict(images=0, images_truncated=0, objects=0, objects_dropped=0, relations=0,
               relations_dropped=0, regions=0, regions_dropped=0)
    for i in range(len(source)):
        ex = source[i]
        labels = np.asarray(ex["labels"]).reshape(-1)
        rels = np.asarray(ex["relations"]).reshape(-1, 3)
        _, _, d_obj, d_rel = truncate_graph(labels, rels, config.max_objects,
                                            config.max_relations)
        nq = len(np.asarray(ex["region_boxes"]).reshape(-1, 4))
        d_reg = max(0, nq - config.max_regions)
        out["images"] += 1
        out["images_truncated"] += int(d_obj + d_rel + d_reg > 0)
        out["objects"] += len(labels)
        out["objects_dropped"] += d_obj
        out["relations"] += len(rels)
        out["relations_dropped"] += d_rel
        out["regions"] += nq
        out["regions_dropped"] += d_reg
    return out
