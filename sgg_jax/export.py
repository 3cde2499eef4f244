"""A trained run as one file that runs with JAX alone: `jax.export` (StableHLO) of the jitted
SGDet, SGCls or PredCls step with the run's parameters inside.

    python -m sgg_jax.export --checkpoint runs/<run> --mode sgdet --output model.sggx

The file is an .npz (read with `np.load(path)`, no pickles) holding `exported` (the bytes of
`jax.export.Exported.serialize()`) and `meta` (UTF-8 JSON): the mode, the batch size, the
canvas size, the inputs and outputs in call order with their shapes and dtypes, the class and
predicate names and how to prepare an image. `examples/run_exported.py` runs one on an image
with NumPy, Pillow and JAX only; `load_exported` here does the reading.

Inputs (B = the exported batch, S = the canvas): images uint8 [B, S, S, 3] (the image resized
so that its long side is S, Pillow bilinear, pasted at the top-left of a zero canvas),
image_sizes int32 [B, 2] (h, w of the content); a run whose reused detector reads its own
canvas also takes detector_images / detector_image_sizes (the same at that size); given-box
modes also take boxes float32 [B, G, 4] (canvas pixels), box_mask bool [B, G] and labels int32
[B, G] (PredCls; ignored in SGCls). Outputs as `sgg_jax.inference` documents them.

ONNX (`--format onnx`) is not available: the maintained converter (jax2onnx 0.17.1) pins
orbax-checkpoint < 0.11.37, which this library cannot use, and stops on RoI-align's custom VJP
(docs/architecture.md, "Export"); the command says so in one line.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any

import numpy as np

FORMAT = "sgg_jax.export/1"
OUTPUTS = ("boxes", "box_mask", "labels", "scores", "pairs", "pair_mask", "rel_scores")
REGION_OUTPUTS = ("region_boxes", "region_mask", "region_scores", "captions")
MODES = ("sgdet", "sgcls", "predcls")
ONNX_UNAVAILABLE = (
    "--format onnx: not available: the maintained JAX-to-ONNX converter (jax2onnx 0.17.1) "
    "requires orbax-checkpoint < 0.11.37 (this library needs >= 0.12.8) and fails on "
    "RoI-align's custom VJP (pallas_kernels/roi_align.py); use --format jax")


def _inputs(exp: Any, mode: str, batch: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of the exported function's inputs, in call order."""
    size = int(exp.config.input.image_size)
    det_size = int(exp.config.input.get("detector_image_size", 0) or 0)
    out = [("images", (batch, size, size, 3), "uint8"), ("image_sizes", (batch, 2), "int32")]
    if mode != "sgdet":
        g = int(exp.config.input.max_objects)
        out += [("boxes", (batch, g, 4), "float32"), ("box_mask", (batch, g), "bool"),
                ("labels", (batch, g), "int32")]
    if det_size and det_size != size:
        out += [("detector_images", (batch, det_size, det_size, 3), "uint8"),
                ("detector_image_sizes", (batch, 2), "int32")]
    return out


def export_run(checkpoint: str, mode: str, output: str, *, batch: int = 1) -> dict:
    """Exports `checkpoint`'s `mode` step at batch `batch` into `output` (written whole or
    not at all); returns the metadata."""
    import jax
    from jax import export as jax_export

    from data_pipelines.errors import atomic_write_bytes
    from sgg_jax import inference
    from sgg_jax.models.registry import DETECTOR_GROUP
    from sgg_jax.training import eval_loop

    if mode not in MODES:
        raise ValueError(f"--mode: expected one of {MODES}, got {mode!r}")
    if batch < 1:
        raise ValueError(f"--batch: expected a positive number, got {batch}")
    exp, params = inference.restore_for_inference(checkpoint)
    if mode == "sgdet" and DETECTOR_GROUP not in params:
        raise ValueError(f"{checkpoint}: this run has no detector (it trained no SGDet); "
                         "export --mode sgcls or predcls")
    inputs = _inputs(exp, mode, batch)
    names = [n for n, _, _ in inputs]
    step = (eval_loop.make_sgdet_step(exp) if mode == "sgdet"
            else eval_loop.make_given_boxes_step(exp, mode))
    outputs: list[str] = []  # which outputs the model has, learnt while it is traced

    def run(*args: Any) -> tuple:
        out = step(params, **dict(zip(names, args)))
        outputs[:] = [k for k in OUTPUTS + REGION_OUTPUTS if k in out]
        return tuple(out[k] for k in outputs)

    exported = jax_export.export(jax.jit(run))(
        *[jax.ShapeDtypeStruct(s, d) for _, s, d in inputs])
    cfg = exp.config
    meta = dict(
        format=FORMAT, mode=mode, batch=batch, model=str(cfg.model.name),
        image_size=int(cfg.input.image_size),
        inputs=[dict(name=n, shape=list(s), dtype=d) for n, s, d in inputs],
        outputs=[dict(name=k, shape=list(a.shape), dtype=str(a.dtype))
                 for k, a in zip(outputs, exported.out_avals)],
        class_names=list(exp.facts.idx_to_label),
        predicate_names=list(exp.facts.idx_to_predicate),
        idx_to_word=list(exp.facts.idx_to_word) if "captions" in outputs else [],
        image=("RGB, resized with Pillow's bilinear filter so that the long side is "
               "image_size (round(side * image_size / long side), at least 1), pasted at the "
               "top-left of a zero image_size x image_size canvas"),
        triplet_score="rel_scores[b, m, p] * scores[b, s] * scores[b, o], p >= 1",
        run=os.path.abspath(checkpoint), platforms=list(exported.platforms))
    buf = io.BytesIO()
    np.savez(buf, exported=np.frombuffer(exported.serialize(), np.uint8),
             meta=np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8))
    atomic_write_bytes(output, buf.getvalue())
    return meta


def load_exported(path: str) -> tuple[Any, dict]:
    """(jax.export.Exported, meta) of an exported file; `exported.call(*inputs)` runs it."""
    from jax import export as jax_export
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode("utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: expected a {FORMAT} file, got {meta.get('format')!r}")
        return jax_export.deserialize(bytearray(z["exported"].tobytes())), meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sgg_jax.export",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a training workdir (or a stage's "
                    "checkpoint directory inside it)")
    ap.add_argument("--mode", choices=MODES, default="sgdet")
    ap.add_argument("--format", choices=("jax", "onnx"), default="jax")
    ap.add_argument("--output", required=True, help="the file to write")
    ap.add_argument("--batch", type=int, default=1, help="images per call (fixed)")
    args = ap.parse_args(argv)
    if args.format == "onnx":
        print(f"error: {ONNX_UNAVAILABLE}", file=sys.stderr)
        return 2
    try:
        meta = export_run(args.checkpoint, args.mode, args.output, batch=args.batch)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = os.path.getsize(args.output) / 2**20
    print(f"exported {meta['model']} {meta['mode']} (batch {meta['batch']}, "
          f"{meta['image_size']} px) to {args.output} ({size:.1f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
