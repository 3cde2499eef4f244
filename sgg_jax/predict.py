"""Scene graphs for a user's own images: load, letterbox, detect + relate, map back, write.

    g = sgg_jax.load("runs/imp")            # a training workdir or a stage's checkpoint dir
    sg = g.predict("photo.jpg")              # path, PIL.Image or HxWx3 uint8 array -> SceneGraph
    sg.draw().save("photo_sg.png")
    g.predict_many(["photos/"], "out/")      # out/<stem>.json + out/<stem>.png per image
    g.predict("photo.jpg", boxes=[[10, 20, 200, 180], ...], labels=["cup", ...])  # your boxes

Images are read and letterboxed as the training pipeline does (`sgg_jax.images`); the SGDet
outputs become `sgg_jax.scene_graph.SceneGraph` documents in the original pixels, ranked under
the graph constraint (`sgg_jax.scene_graph`). Boxes found elsewhere (one's own detector, a hand
annotation; `GivenBoxes`, or a JSON file of them: `read_boxes_file`) are related instead of
detected: with their classes as in PredCls, without as in SGCls (the model classifies them).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import difflib
import io
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data_pipelines.errors import DataFormatError, atomic_write_bytes
from sgg_jax.images import ImageInput, LoadedImage, find_images, letterbox, load_image
from sgg_jax.scene_graph import SceneGraph, build_scene_graph

SgdetFn = Callable[[np.ndarray, np.ndarray], dict]


# --------------------------------------------------------------------------------------------
# Boxes found elsewhere
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class GivenBoxes:
    """One image's boxes from elsewhere, in its original pixels: boxes [G, 4] x1y1x2y2,
    labels [G] 1-based class ids (None: the model classifies them, SGCls; given: PredCls),
    scores [G] (None: the model's, or 1 with labels). `source` names them in errors (e.g.
    "boxes.json: 'photo.jpg'")."""

    boxes: np.ndarray
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None
    source: str = "boxes"

    @property
    def mode(self) -> str:
        return "predcls" if self.labels is not None else "sgcls"


def given_boxes(boxes: Any, labels: Any = None, scores: Any = None, *,
                class_names: Sequence[str], source: str = "boxes") -> GivenBoxes:
    """Checks and converts user values: boxes as [[x1, y1, x2, y2], ...], labels as class
    names or 1-based ids, scores as numbers. Raises DataFormatError naming `source`, the field
    and the box index. (The image's size is checked later, `check_given`.)"""
    from data_pipelines.errors import as_box_array
    try:
        arr = as_box_array(list(boxes), source, "boxes")
    except TypeError as e:
        raise DataFormatError(source, "boxes", "a list of [x1, y1, x2, y2] boxes",
                              type(boxes).__name__) from e
    n = arr.shape[0]
    ids = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != n:
            raise DataFormatError(source, "labels", f"one label per box ({n})", len(labels))
        lookup = {name: i for i, name in enumerate(class_names) if i > 0}
        ids = np.zeros(n, np.int32)
        for i, label in enumerate(labels):
            if isinstance(label, str) and label in lookup:
                ids[i] = lookup[label]
            elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and (
                    1 <= label < len(class_names)):
                ids[i] = int(label)
            else:
                near = difflib.get_close_matches(str(label), list(lookup), n=1)
                raise DataFormatError(
                    source, f"labels[{i}]", f"one of the run's {len(lookup)} class names or an "
                    f"id in [1, {len(class_names) - 1}]", repr(label)
                    + (f" (did you mean {near[0]!r}?)" if near else ""))
    score_arr = None
    if scores is not None:
        try:
            score_arr = np.asarray(list(scores), np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataFormatError(source, "scores", "numbers", repr(scores)[:60]) from e
        if score_arr.size != n or not np.all(np.isfinite(score_arr)):
            raise DataFormatError(source, "scores", f"{n} finite numbers (one per box)",
                                  score_arr.tolist()[:8])
    return GivenBoxes(arr, ids, score_arr, source)


def check_given(given: GivenBoxes, width: int, height: int, max_objects: int) -> GivenBoxes:
    """The boxes checked against their image (positive area, not entirely outside; an
    overhang is clipped) and the model's maximum number of objects."""
    from data_pipelines.errors import check_and_clip_boxes
    n = given.boxes.shape[0]
    if n == 0:
        raise DataFormatError(given.source, "boxes", "at least one box", "none")
    if n > max_objects:
        raise DataFormatError(given.source, "boxes", f"at most {max_objects} boxes (the model's "
                              "config.input.max_objects)", n)
    boxes, _ = check_and_clip_boxes(given.boxes, width, height, given.source, "boxes")
    return dataclasses.replace(given, boxes=boxes)


def read_boxes_file(path: str, class_names: Sequence[str]) -> dict[str, GivenBoxes]:
    """{image key: GivenBoxes} from a JSON file mapping each image (its path as given, or its
    file name) to {"boxes": [[x1, y1, x2, y2], ...], "labels": [names or ids] (optional),
    "scores": [...] (optional)}. An entry that does not parse is kept as its error, raised
    when that image is predicted (the others still run)."""
    from data_pipelines.errors import load_json
    data = load_json(path, "boxes")
    if not isinstance(data, dict):
        raise DataFormatError(path, None, 'an object {"image.jpg": {"boxes": [...], '
                              '"labels": [...]}, ...}', type(data).__name__)
    out: dict[str, Any] = {}
    for key, entry in data.items():
        source = f"{path}: {key!r}"
        try:
            if not isinstance(entry, dict) or "boxes" not in entry:
                raise DataFormatError(source, None, 'an object {"boxes": [...], "labels": '
                                      '[...] (optional), "scores": [...] (optional)}',
                                      repr(entry)[:60])
            unknown = sorted(set(entry) - {"boxes", "labels", "scores"})
            if unknown:
                raise DataFormatError(source, unknown[0], "only boxes, labels and scores",
                                      "an unknown field")
            out[key] = given_boxes(entry["boxes"], entry.get("labels"), entry.get("scores"),
                                   class_names=class_names, source=source)
        except DataFormatError as e:
            out[key] = e
    return out


def _given_for(path: str, table: dict[str, Any], boxes_file: str) -> GivenBoxes:
    """The entry of `table` for an image: its path as given, or its file name."""
    for key in (path, os.path.normpath(path), os.path.basename(path)):
        if key in table:
            found = table[key]
            if isinstance(found, DataFormatError):
                raise found
            return found
    raise DataFormatError(boxes_file, None, f"an entry for {os.path.basename(path)!r} (keys "
                          "are image paths as given, or file names)", "none")


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PredictSummary:
    """What `predict_many` did: written (input, json, png) triples and (input, error) pairs."""

    written: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 if every image succeeded (and there was at least one), else 2."""
        return 2 if self.failed or not self.written else 0

    def line(self) -> str:
        return f"predict: {len(self.written)} ok, {len(self.failed)} failed"


def output_stems(paths: Sequence[str]) -> list[str]:
    """Output file stems: the input's stem, made unique (a.jpg, a.png -> a, a-2)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p.rstrip(os.sep)))[0] or "image"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        out.append(stem if n == 1 else f"{stem}-{n}")
    return out


class Predictor:
    """Runs an SGDet function on images of any size; the result of `sgg_jax.load`.

    sgdet_fn(images uint8 [B,S,S,3], image_sizes int [B,2] (h, w)) -> dict of numpy arrays
    (boxes [B,D,4] canvas pixels, box_mask, labels, scores, rel_pairs [B,M,2], pair_mask,
    rel_scores [B,M,P+1]; captioning models also region_boxes [B,Q,4], region_mask,
    region_scores [B,Q] and captions [B,Q,L], kept when `idx_to_word`, the caption vocabulary,
    is given); a batch of n images is padded to `bucket_size(n)` (fixed shapes, one compile
    per bucket: 1, 2, 4, ... up to `batch_size`).
    `boxes_fn` (`inference.make_given_boxes_fn`): the same for boxes found elsewhere, padded
    to `max_objects`; sgdet_fn is None for a run without a detector (given boxes only).
    `io_threads`: threads that decode inputs and draw / write outputs in `predict_many`.
    """

    def __init__(self, sgdet_fn: SgdetFn, *, image_size: int, batch_size: int,
                 class_names: Sequence[str], predicate_names: Sequence[str],
                 top_relations: int = 20, max_drawn_relations: int | None = None,
                 io_threads: int = 4, idx_to_word: Sequence[str] | None = None,
                 top_regions: int = 5, region_nms: float = 1.0,
                 detector_image_size: int | None = None, boxes_fn: Any = None,
                 max_objects: int = 0):
        if image_size < 1 or batch_size < 1:
            raise ValueError(f"Predictor: image_size and batch_size must be >= 1, got "
                             f"{image_size}, {batch_size}")
        self.sgdet_fn = sgdet_fn
        self.boxes_fn = boxes_fn
        self.max_objects = int(max_objects)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.class_names = list(class_names)
        self.predicate_names = list(predicate_names)
        self.top_relations = int(top_relations)
        self.max_drawn_relations = max_drawn_relations
        self.io_threads = int(io_threads)
        self.idx_to_word = list(idx_to_word) if idx_to_word else None
        self.top_regions = int(top_regions)
        self.region_nms = float(region_nms)
        # The detector's own canvas when it differs (a reused detector trained at its size).
        self.detector_image_size = (int(detector_image_size) if detector_image_size and
                                    int(detector_image_size) != self.image_size else None)

    def _run(self, loaded: Sequence[LoadedImage],
             given: Sequence[GivenBoxes] | None = None) -> list[SceneGraph]:
        """One batch, all detected (`given` None) or all with given boxes of one mode (checked
        against their image), padded to `bucket_size(n)` rows (the last real image repeats
        into the padding)."""
        n = len(loaded)
        rows = list(loaded) + [loaded[-1]] * (self.bucket_size(n) - n)
        images = np.stack([li.canvas for li in rows])
        sizes = np.array([li.content_hw for li in rows], np.int32)
        detector = {}
        if self.detector_image_size:
            boxed = [letterbox(li.image, self.detector_image_size) for li in rows]
            detector = dict(detector_images=np.stack([b[0] for b in boxed]),
                            detector_image_sizes=np.array([b[2:] for b in boxed], np.int32))
        mode = "sgdet" if given is None else given[0].mode
        if given is None:
            if self.sgdet_fn is None:
                raise ValueError("this run has no detector: give each image's boxes")
            out = self.sgdet_fn(images, sizes, **detector)
        else:
            out = self._run_given(images, sizes, loaded, given, detector)
        out = {k: np.asarray(v) for k, v in out.items()}
        return [build_scene_graph(out, b, loaded[b], self.class_names, self.predicate_names,
                                  self.top_relations, self.idx_to_word, self.top_regions,
                                  self.region_nms, mode=mode)
                for b in range(n)]

    def bucket_size(self, n: int) -> int:
        """The batch a run of n images is padded to: the smallest power of two >= n, at most
        `batch_size`, so that one image runs at batch 1 (~14x faster per image than padded to
        16 on a CPU) while at most log2(batch_size) + 1 shapes are ever compiled."""
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"a batch holds 1..{self.batch_size} images, got {n}")
        return min(1 << (n - 1).bit_length(), self.batch_size)

    def _run_given(self, images: np.ndarray, sizes: np.ndarray,
                   loaded: Sequence[LoadedImage], given: Sequence[GivenBoxes],
                   detector: dict) -> dict:
        if self.boxes_fn is None:
            raise ValueError("this predictor cannot take given boxes (no boxes_fn)")
        if len({g.mode for g in given}) != 1:
            raise ValueError("one batch of given boxes must be all with labels or all without")
        b, g = images.shape[0], self.max_objects
        boxes = np.zeros((b, g, 4), np.float32)
        mask = np.zeros((b, g), bool)
        labels = np.zeros((b, g), np.int32)
        for i, (li, gb) in enumerate(zip(loaded, given)):
            k = gb.boxes.shape[0]
            boxes[i, :k] = gb.boxes * li.scale  # original pixels -> the model's canvas
            mask[i, :k] = True
            if gb.labels is not None:
                labels[i, :k] = gb.labels
        with_labels = given[0].labels is not None
        out = dict(self.boxes_fn(images, sizes, boxes, mask, labels if with_labels else None,
                                 **detector))
        scores = np.array(out["scores"], np.float32)
        for i, gb in enumerate(given):
            if gb.scores is not None:  # the given confidences rank the triplets
                scores[i, :gb.boxes.shape[0]] = gb.scores
        out["scores"] = scores
        return out

    def _checked(self, loaded: LoadedImage, given: GivenBoxes | None) -> GivenBoxes | None:
        if given is None:
            return None
        w, h = loaded.image.size
        return check_given(given, w, h, self.max_objects)

    def predict_batch(self, images: Sequence[ImageInput],
                      given: Sequence[GivenBoxes | None] | None = None) -> list[SceneGraph]:
        """Scene graphs of several images (any number; run in padded batches). `given`: per
        image, its `GivenBoxes` or None (detected)."""
        loaded = [load_image(im, self.image_size) for im in images]
        given = list(given) if given is not None else [None] * len(loaded)
        if len(given) != len(loaded):
            raise ValueError(f"predict_batch: {len(loaded)} images but {len(given)} box sets")
        checked = [self._checked(li, g) for li, g in zip(loaded, given)]
        out: list[SceneGraph | None] = [None] * len(loaded)
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for i, g in enumerate(checked):
            groups["sgdet" if g is None else g.mode].append(i)
        for mode, idx in groups.items():
            for j in range(0, len(idx), self.batch_size):
                part = idx[j:j + self.batch_size]
                graphs = self._run([loaded[i] for i in part],
                                   None if mode == "sgdet" else [checked[i] for i in part])
                for i, sg in zip(part, graphs):
                    out[i] = sg
        return out  # type: ignore[return-value]

    def predict(self, image: ImageInput, boxes: Any = None, labels: Any = None,
                scores: Any = None) -> SceneGraph:
        """The scene graph of one image (path, PIL.Image or HxWx3 uint8 array). With `boxes`
        ([[x1, y1, x2, y2], ...] in the image's pixels) the model relates those boxes:
        classified by the model (SGCls), or with `labels` (class names or ids) as given
        (PredCls); `scores` (optional) rank the objects. Without boxes the run's detector
        finds the objects (SGDet)."""
        given = None
        if boxes is not None:
            given = given_boxes(boxes, labels, scores, class_names=self.class_names)
        elif labels is not None or scores is not None:
            raise ValueError("predict: labels and scores need boxes")
        return self.predict_batch([image], [given])[0]

    def predict_many(self, paths: str | Sequence[str], output_dir: str, *,
                     boxes: str | dict[str, Any] | None = None, progress: bool = True,
                     stderr: Any = None) -> PredictSummary:
        """Writes <stem>.json and <stem>.png per image into `output_dir` (atomically).

        `paths`: files and/or folders (or one comma-separated string, see `find_images`).
        `boxes`: a JSON file of each image's boxes (`read_boxes_file`), or its parsed table;
        every image then needs an entry. An image that cannot be read, whose boxes are wrong
        (naming the box), or that cannot be written gets one "error: ..." line on stderr and is
        skipped; the others still run. Returns a `PredictSummary`.
        """
        from tqdm.auto import tqdm
        stderr = stderr or sys.stderr
        boxes_file = boxes if isinstance(boxes, str) else "boxes"
        table = read_boxes_file(boxes, self.class_names) if isinstance(boxes, str) else boxes
        files = find_images(paths)
        summary = PredictSummary()
        if not files:
            summary.failed.append((str(paths), "no image files found"))
            print(f"error: {paths}: no image files found", file=stderr)
            return summary
        os.makedirs(output_dir, exist_ok=True)
        stems = output_stems(files)
        inputs = {os.path.realpath(f) for f in files}
        targets = {f: (os.path.join(output_dir, s + ".json"), os.path.join(output_dir, s + ".png"))
                   for f, s in zip(files, stems)}
        clash = [t for pair in targets.values() for t in pair if os.path.realpath(t) in inputs]
        if clash:
            raise ValueError(f"output directory {output_dir!r}: writing {clash[0]} would "
                             "overwrite an input image; choose another output directory")
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress,
                   dynamic_ncols=True)

        def fail(path: str, err: BaseException) -> None:
            msg = str(err) if isinstance(err, DataFormatError) else f"{path}: {err}"
            summary.failed.append((path, msg))
            tqdm.write(f"error: {msg}", file=stderr)
            bar.update(1)

        def finish_writes(keep: int) -> None:
            """Waits for the oldest writes until at most `keep` are in flight."""
            while len(writes) > keep:
                path, fut = writes.popleft()
                try:
                    summary.written.append((path, *fut.result()))
                    bar.update(1)
                except (OSError, ValueError) as e:
                    fail(path, e)

        # Decoding the next images and drawing / PNG-encoding the last ones (Pillow and zlib
        # release the GIL) overlap the model; at most ~2 batches of images are held at once.
        ahead = self.batch_size
        writes: collections.deque = collections.deque()
        loads: collections.deque = collections.deque()
        todo = iter(files)
        pending: list[tuple[LoadedImage, GivenBoxes | None]] = []

        def load(path: str) -> tuple[LoadedImage, GivenBoxes | None]:
            given = None if table is None else _given_for(path, table, boxes_file)
            li = load_image(path, self.image_size)
            return li, self._checked(li, given)

        def run_pending() -> None:
            nonlocal pending
            given = [g for _, g in pending]
            graphs = self._run([li for li, _ in pending], None if given[0] is None else given)
            for (li, _), sg in zip(pending, graphs):
                j, png = targets[li.path]
                writes.append((li.path, pool.submit(
                    write_scene_graph, sg, j, png, self.max_drawn_relations)))
            pending = []
            finish_writes(keep=ahead)

        def mode_of(item: tuple[LoadedImage, GivenBoxes | None]) -> str:
            return "sgdet" if item[1] is None else item[1].mode

        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, self.io_threads)) as pool:
                def submit_load() -> None:
                    path = next(todo, None)
                    if path is not None:
                        loads.append((path, pool.submit(load, path)))

                for _ in range(ahead):
                    submit_load()
                while loads or pending:
                    if loads:
                        path, fut = loads.popleft()
                        submit_load()
                        try:
                            item = fut.result()
                        except ValueError as e:
                            fail(path, e)
                            continue
                        if pending and mode_of(item) != mode_of(pending[0]):
                            run_pending()  # a batch holds one mode
                        pending.append(item)
                    if pending and (len(pending) == self.batch_size or not loads):
                        run_pending()
                finish_writes(keep=0)
        finally:
            bar.close()
        return summary


def write_scene_graph(sg: SceneGraph, json_path: str, png_path: str,
                      max_relations: int | None = None) -> tuple[str, str]:
    """Writes the JSON and the drawn PNG, each through a temp file and os.replace."""
    atomic_write_bytes(json_path, (sg.to_json() + "\n").encode("utf-8"))
    buf = io.BytesIO()
    # zlib level 1: ~1.7x faster than the default 6 on photos, files ~1.5x larger.
    sg.draw(max_relations=max_relations).save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(png_path, buf.getvalue())
    return json_path, png_path


# --------------------------------------------------------------------------------------------
# From a trained run
# --------------------------------------------------------------------------------------------

def load(checkpoint: str | os.PathLike, config: Any = None, *, explicit: Any = None,
         allow_partial: bool = False, top_relations: int | None = None,
         batch_size: int | None = None, top_regions: int | None = None,
         region_nms: float | None = None) -> Predictor:
    """A `Predictor` from a training workdir or a stage's checkpoint directory; needs only the
    run directory (its config.json, dataset facts and checkpoints), no dataset.

    `config`: changes to evaluation-only fields of the run's saved config, as a mapping of
    dotted keys (e.g. {"predict.top_relations": 50, "input.eval_batch_size": 4}) or a
    ConfigDict (`explicit` then names which of its keys were asked for; default all); a model
    or data field that differs from the run's raises `RunConfigError` naming it.
    top_relations / batch_size / top_regions / region_nms default to the resulting
    config.predict.top_relations, input.eval_batch_size, predict.top_regions and
    predict.region_nms. An unfinished run is refused unless `allow_partial`. Runs of models that
    caption regions also give their top regions' captions.
    """
    from sgg_jax import inference
    exp, params = inference.restore_for_inference(os.fspath(checkpoint), config,
                                                  explicit=explicit, allow_partial=allow_partial)
    cfg = exp.config
    if top_regions is None:
        top_regions = int(cfg.predict.get("top_regions", 5))
    if region_nms is None:
        region_nms = float(cfg.predict.get("region_nms", 1.0))
    from sgg_jax.models.registry import DETECTOR_GROUP
    return Predictor(
        inference.make_sgdet_fn(exp, params) if DETECTOR_GROUP in params else None,
        image_size=int(cfg.input.image_size),
        batch_size=int(batch_size or cfg.input.eval_batch_size),
        class_names=list(exp.facts.idx_to_label),
        predicate_names=list(exp.facts.idx_to_predicate),
        top_relations=int(top_relations if top_relations is not None
                          else cfg.predict.top_relations),
        idx_to_word=list(exp.facts.idx_to_word), top_regions=int(top_regions),
        region_nms=float(region_nms),
        detector_image_size=int(cfg.input.get("detector_image_size", 0) or 0),
        boxes_fn=inference.make_given_boxes_fn(exp, params),
        max_objects=int(cfg.input.max_objects))


def run_cli(config: Any, checkpoint: str, images: str, output: str,
            explicit: Any = (), boxes: str = "") -> int:
    """`--mode predict`: returns the exit code (0, or 2 when any image failed). The run's own
    config fixes the model and canvas; the command line's explicit `--config.*` values may
    change evaluation-only fields (predict.*, input.eval_batch_size)."""
    if not checkpoint:
        raise ValueError("--checkpoint: expected a training workdir or a stage's checkpoint "
                         "directory")
    if not images:
        raise ValueError("--images (or config.predict.images): expected comma-separated image "
                         "files or folders")
    if not output:
        raise ValueError("--output (or config.predict.output): expected a directory for the "
                         "<stem>.json / <stem>.png results")
    predictor = load(checkpoint, config, explicit=explicit)
    if not boxes and predictor.sgdet_fn is None:
        raise ValueError(f"{checkpoint}: this run has no detector (it trained no SGDet): give "
                         "the images' boxes with --boxes FILE")
    summary = predictor.predict_many(images, output, boxes=boxes or None)
    print(f"{summary.line()} -> {output}", file=sys.stderr)
    return summary.exit_code
