"""Per-image inference time of trained-model evaluation: PredCls / SGCls scoring and the SGDet
pipeline (detector + relation model; with --detector also the detector alone), jitted, at
batch 1 and at the eval batch size.

ms/image = median wall time of one jitted call (after warm-up) / batch. The inputs are the
first test batch of the config's dataset; parameters are random (time does not depend on the
weights) unless --checkpoint names a run. Several configs in one run (--configs a.py,b.py)
are timed in turns (a, b, a, b, ...), so that a change in the machine's load hits all alike,
and each row carries its ratio to the first config's same row.
A model that cannot run a mode (e.g. no SGDet yet) gets a row with the error instead.

  python benchmarks/inference.py --configs configs/imp.py,configs/sgp.py:imp [--preset default]
      [--modes predcls,sgcls,sgdet] [--batches 1,eval] [--repeats 5] [--detector]
      [--checkpoint DIR] [--output out.json]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit_json, print_table  # noqa: E402

MODES = ("predcls", "sgcls", "sgdet")


def load_config(path: str, preset: str, modes: str, cache_dir: str):
    """configs/<model>.py:<preset> evaluating `modes` (so SGDet adds the detector)."""
    spec = importlib.util.spec_from_file_location("bench_cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset)
    with config.unlocked():
        config.eval.modes = modes
        config.train.data_parallel = 1
        if cache_dir:
            config.data.cache_dir = cache_dir
    return config


def step_functions(exp: Any, mode: str, detector: bool = False) -> dict[str, Callable]:
    """{row name: un-jitted fn(params, batch)} timed for one mode (SGDet: the pipeline, and
    with `detector` also the detector alone)."""
    from sgg_jax.models import DETECTOR_GROUP
    from sgg_jax.training import eval_loop

    if mode != "sgdet":
        score = eval_loop.make_score_step(exp.model(mode), mode, exp.model_state)
        return {mode: lambda p, b: score(exp.relation_params(p), b)}
    sgdet = eval_loop.make_sgdet_step(exp)
    out = {"sgdet": lambda p, b: sgdet(p, b.images, b.image_sizes)}
    if detector:
        model, state = exp.detector(), exp.detector_state
        out["sgdet:detector"] = lambda p, b: model.apply(
            {"params": p[DETECTOR_GROUP], **state}, b.images, b.image_sizes).boxes
    return out


def interleaved_medians(calls: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Median seconds of each call, timed in turns (a, b, a, b, ...) after one warm-up each,
    so that a change in the machine's load falls on every call alike."""
    for call in calls:
        jax.block_until_ready(call())
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def prepare(entry: str, args: argparse.Namespace) -> dict:
    """A config's experiment, parameters and first test batch (device arrays). `entry` is a
    config file, optionally with its own argument (`configs/sgp.py:imp`), which then also names
    its rows."""
    from sgg_jax.training import data as data_lib, experiment

    path, _, own = entry.partition(":")
    config = load_config(path, own or args.preset, args.modes, args.cache_dir)
    exp = experiment.setup(config, tempfile.mkdtemp(prefix="sgg_bench_inference_"))
    rng = jax.random.key(int(config.seed))
    params = (experiment.restore_final_params(exp, rng, args.checkpoint)[0] if args.checkpoint
              else experiment.init_params(exp, rng))
    host = next(iter(data_lib.eval_loader(config, exp.data, exp.mesh, config.eval.split)))
    name = f"{config.model.name}:{own}" if own else config.model.name
    return dict(name=name, exp=exp, params=params,
                batch=jax.tree.map(jnp.asarray, host))


def bench(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    """Rows by mode, then batch size, then config (so that a cut-short run still holds
    same-mode pairs)."""
    rows = []
    fns = {}
    for run in runs:
        for mode in [m for m in args.modes.split(",") if m]:
            try:
                fns[(run["name"], mode)] = step_functions(run["exp"], mode, args.detector)
            except Exception as e:  # noqa: BLE001 - a model without this mode: report, go on
                rows.append(dict(model=run["name"], mode=mode, error=_short(e)))
    for mode in [m for m in args.modes.split(",") if m]:
        names = sorted({n for run in runs for n in fns.get((run["name"], mode), {})},
                       key=lambda n: (n != mode, n))
        for name in names:
            for b_spec in args.batches.split(","):
                group, calls, first_row = [], [], len(rows)
                for run in runs:
                    fn = fns.get((run["name"], mode), {}).get(name)
                    full = run["batch"]
                    b = int(full.images.shape[0]) if b_spec == "eval" else int(b_spec)
                    if fn is None or b > int(full.images.shape[0]):
                        continue
                    batch = jax.tree.map(lambda x: x[:b], full)
                    row = dict(model=run["name"], mode=name, batch=b)
                    try:
                        t0 = time.perf_counter()
                        compiled = jax.jit(fn).lower(run["params"], batch).compile()
                        row["compile_s"] = time.perf_counter() - t0
                        group.append(row)
                        calls.append(functools.partial(compiled, run["params"], batch))
                    except Exception as e:  # noqa: BLE001
                        row["error"] = _short(e)
                    rows.append(row)
                for row, sec in zip(group, interleaved_medians(calls, args.repeats)):
                    row.update(ms_per_image=1e3 * sec / row["batch"], ms_per_batch=1e3 * sec)
                for row in rows[first_row:]:
                    print(row, flush=True)
    return rows


def _short(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def add_ratios(rows: list[dict]) -> None:
    """ratio = ms/image over the first model's ms/image for the same mode and batch."""
    first = rows[0]["model"] if rows else None
    ref = {(r["mode"], r.get("batch")): r.get("ms_per_image") for r in rows
           if r["model"] == first}
    for r in rows:
        base = ref.get((r["mode"], r.get("batch")))
        if base and r.get("ms_per_image") is not None:
            r[f"vs_{first}"] = r["ms_per_image"] / base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", "--config", default="configs/imp.py",
                    help="comma-separated model config files")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--batches", default="1,eval", help="batch sizes; 'eval' = eval_batch_size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--detector", action="store_true",
                    help="also time the SGDet detector alone (row sgdet:detector)")
    ap.add_argument("--checkpoint", default="", help="a run's workdir (one config only)")
    ap.add_argument("--cache-dir", default="")
    ap.add_argument("--output", default="")
    args = ap.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    if args.checkpoint and len(configs) > 1:
        ap.error("--checkpoint needs a single --configs entry")
    rows = bench([prepare(path, args) for path in configs], args)
    add_ratios(rows)
    first = rows[0]["model"] if rows else ""
    columns = ["model", "mode", "batch", "ms_per_image", "ms_per_batch", "compile_s",
               f"vs_{first}", "error"]
    print_table(rows, [c for c in columns if any(c in r for r in rows)],
                title=f"inference (preset {args.preset}, median of {args.repeats}, "
                      f"{jax.default_backend()})")
    emit_json(dict(rows=rows, preset=args.preset, repeats=args.repeats,
                   backend=jax.default_backend(), devices=jax.device_count(),
                   loadavg=os.getloadavg(), checkpoint=args.checkpoint or None),
              args.output or None)


if __name__ == "__main__":
    main()
