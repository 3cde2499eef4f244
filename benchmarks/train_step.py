"""Training throughput of a relation model and its fraction of this machine's matmul peak.

images/s = global batch / median step time. The step's FLOPs come from XLA's cost analysis of
the compiled step; the peak is the FLOP/s of a large float32 matmul measured in the same run.

  python benchmarks/train_step.py [--config configs/imp.py] [--preset default] [--steps 10]
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit_json, median_seconds, print_table  # noqa: E402


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32) -> float:
    """FLOP/s of an n x n x n matmul, the attainable peak for dense compute here."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    return 2.0 * n ** 3 / median_seconds(lambda: f(a, b), repeats=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/imp.py")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cache-dir", default="")
    ap.add_argument("--output", default="")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override, e.g. model.detector.backbone_stride=8")
    args = ap.parse_args()

    from sgg_jax.training import data as data_lib, experiment, mesh as mesh_lib, optim, trainer
    from sgg_jax.training.steps import TrainState

    spec = importlib.util.spec_from_file_location("cfg", args.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config(args.preset)
    if args.cache_dir:
        config.data.cache_dir = args.cache_dir
    for item in args.set:
        key, _, value = item.partition("=")
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = type(node[last])(ast.literal_eval(value)) if not isinstance(
            node[last], str) else value
    exp = experiment.setup(config, "/tmp/sgg_bench_train_step")
    params = experiment.init_params(exp, jax.random.key(0))
    plan = exp.stages[-1]  # the last relation stage, as the run trains it
    stage_name = plan.name
    optimizers = optim.make_optimizers(plan.config, config.train, params)
    step_fn = trainer.make_stage_step(exp, plan, optimizers)
    state = TrainState.create(params, optimizers)
    batch = mesh_lib.to_global(next(iter(data_lib.train_loader(config, exp.data, exp.mesh, seed=0))),
                               exp.mesh)
    rng = jax.random.key(0)
    jitted = jax.jit(step_fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    step_s = median_seconds(lambda: compiled(state, batch, rng)[1]["loss"], repeats=args.steps)
    peak = matmul_peak_flops()
    bs = int(config.input.batch_size)
    row = dict(model=config.model.name, backbone=config.model.backbone, stage=stage_name,
               image_size=int(config.input.image_size), batch=bs, step_ms=step_s * 1e3,
               images_per_s=bs / step_s, step_gflop=flops / 1e9,
               achieved_gflops=flops / step_s / 1e9, matmul_peak_gflops=peak / 1e9,
               fraction_of_peak=flops / step_s / peak, compile_s=compile_s,
               devices=jax.device_count(), backend=jax.default_backend())
    print_table([row], list(row), title="train step (median over %d steps)" % args.steps)
    emit_json(row, args.output or None)


if __name__ == "__main__":
    main()
