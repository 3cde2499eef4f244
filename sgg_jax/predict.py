"""Scene graphs for a user's own images: load, letterbox, detect + relate, map back, write.

    g = sgg_jax.load("runs/imp")            # a training workdir or a stage's checkpoint dir
    sg = g.predict("photo.jpg")              # path, PIL.Image or HxWx3 uint8 array -> SceneGraph
    sg.draw().save("photo_sg.png")
    g.predict_many(["photos/"], "out/")      # out/<stem>.json + out/<stem>.png per image

Images are read and letterboxed as the training pipeline does (`sgg_jax.images`); the SGDet
outputs become `sgg_jax.scene_graph.SceneGraph` documents in the original pixels, ranked under
the graph constraint (`sgg_jax.scene_graph`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
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
    is given); batches are always padded to `batch_size` (fixed shapes, one compile).
    `io_threads`: threads that decode inputs and draw / write outputs in `predict_many`.
    """

    def __init__(self, sgdet_fn: SgdetFn, *, image_size: int, batch_size: int,
                 class_names: Sequence[str], predicate_names: Sequence[str],
                 top_relations: int = 20, max_drawn_relations: int | None = None,
                 io_threads: int = 4, idx_to_word: Sequence[str] | None = None,
                 top_regions: int = 5, region_nms: float = 1.0,
                 detector_image_size: int | None = None):
        if image_size < 1 or batch_size < 1:
            raise ValueError(f"Predictor: image_size and batch_size must be >= 1, got "
                             f"{image_size}, {batch_size}")
        self.sgdet_fn = sgdet_fn
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

    def _run(self, loaded: Sequence[LoadedImage]) -> list[SceneGraph]:
        """One padded batch (the last real image repeats into the padding rows)."""
        n = len(loaded)
        rows = list(loaded) + [loaded[-1]] * (self.batch_size - n)
        images = np.stack([li.canvas for li in rows])
        sizes = np.array([li.content_hw for li in rows], np.int32)
        detector = {}
        if self.detector_image_size:
            boxed = [letterbox(li.image, self.detector_image_size) for li in rows]
            detector = dict(detector_images=np.stack([b[0] for b in boxed]),
                            detector_image_sizes=np.array([b[2:] for b in boxed], np.int32))
        out = {k: np.asarray(v) for k, v in self.sgdet_fn(images, sizes, **detector).items()}
        return [build_scene_graph(out, b, loaded[b], self.class_names, self.predicate_names,
                                  self.top_relations, self.idx_to_word, self.top_regions,
                                  self.region_nms)
                for b in range(n)]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[SceneGraph]:
        """Scene graphs of several images (any number; run in padded batches)."""
        loaded = [load_image(im, self.image_size) for im in images]
        out: list[SceneGraph] = []
        for i in range(0, len(loaded), self.batch_size):
            out.extend(self._run(loaded[i:i + self.batch_size]))
        return out

    def predict(self, image: ImageInput) -> SceneGraph:
        """The scene graph of one image (path, PIL.Image or HxWx3 uint8 array)."""
        return self.predict_batch([image])[0]

    def predict_many(self, paths: str | Sequence[str], output_dir: str, *,
                     progress: bool = True, stderr: Any = None) -> PredictSummary:
        """Writes <stem>.json and <stem>.png per image into `output_dir` (atomically).

        `paths`: files and/or folders (or one comma-separated string, see `find_images`).
        An image that cannot be read or written gets one "error: FILE: ..." line on stderr and
        is skipped; the others still run. Returns a `PredictSummary`.
        """
        from tqdm.auto import tqdm
        stderr = stderr or sys.stderr
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
        pending: list[LoadedImage] = []
        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, self.io_threads)) as pool:
                def submit_load() -> None:
                    path = next(todo, None)
                    if path is not None:
                        loads.append((path, pool.submit(load_image, path, self.image_size)))

                for _ in range(ahead):
                    submit_load()
                while loads or pending:
                    if loads:
                        path, fut = loads.popleft()
                        submit_load()
                        try:
                            pending.append(fut.result())
                        except ValueError as e:
                            fail(path, e)
                            continue
                    if pending and (len(pending) == self.batch_size or not loads):
                        for li, sg in zip(pending, self._run(pending)):
                            j, png = targets[li.path]
                            writes.append((li.path, pool.submit(
                                write_scene_graph, sg, j, png, self.max_drawn_relations)))
                        pending = []
                        finish_writes(keep=ahead)
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
    return Predictor(
        inference.make_sgdet_fn(exp, params), image_size=int(cfg.input.image_size),
        batch_size=int(batch_size or cfg.input.eval_batch_size),
        class_names=list(exp.facts.idx_to_label),
        predicate_names=list(exp.facts.idx_to_predicate),
        top_relations=int(top_relations if top_relations is not None
                          else cfg.predict.top_relations),
        idx_to_word=list(exp.facts.idx_to_word), top_regions=int(top_regions),
        region_nms=float(region_nms),
        detector_image_size=int(cfg.input.get("detector_image_size", 0) or 0))


def run_cli(config: Any, checkpoint: str, images: str, output: str,
            explicit: Any = ()) -> int:
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
    summary = predictor.predict_many(images, output)
    print(f"{summary.line()} -> {output}", file=sys.stderr)
    return summary.exit_code
