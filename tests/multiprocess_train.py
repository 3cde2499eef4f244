"""Runs the tiny training (or, with --eval, the evaluation of the run it trained, as the first
thing the process does) in one process of a multi-process (gloo) job; used by
tests/test_training.py. With --num-processes 1 it is a plain single-process run (the
reference; no jax.distributed). Process 0 writes the final parameters to --output (npz);
--metrics: the training scalars it logged (JSON; with --evaluate also the evaluation of the
final parameters); with --eval it writes the run's results.json."""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--coordinator", default="")
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--num-processes", type=int, default=2)
    ap.add_argument("--model", default="imp")
    ap.add_argument("--data-parallel", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0, help="relations stage steps (0: preset's)")
    ap.add_argument("--batch-size", type=int, default=0, help="global batch (0: preset's)")
    ap.add_argument("--heartbeat", type=int, default=100, help="heartbeat timeout, seconds")
    ap.add_argument("--output", default="")
    ap.add_argument("--metrics", default="")
    ap.add_argument("--evaluate", action="store_true", help="--metrics: also evaluate")
    ap.add_argument("--eval", action="store_true")
    args = ap.parse_args()
    distributed = {}
    if args.num_processes > 1:
        distributed = {"distributed.coordinator_address": args.coordinator,
                       "distributed.num_processes": args.num_processes,
                       "distributed.process_id": args.process_id,
                       "distributed.heartbeat_timeout_s": args.heartbeat}
    if args.eval:
        # The run's own config with this job's distributed fields; nothing before this line
        # touches a JAX backend, so jax.distributed.initialize must come first inside.
        from sgg_jax import inference
        from sgg_jax.training import trainer

        overrides = {**distributed, "eval.num_pictures": 0}
        trainer.evaluate_run(inference.run_config(args.workdir, overrides), args.workdir)
        return
    import jax
    import numpy as np
    from training_utils import RecordingWriter, flat_params, load_config, run_stages

    steps = {"train.stages.relations.num_steps": args.steps} if args.steps else {}
    if args.batch_size:
        steps.update({"input.batch_size": args.batch_size,
                      "input.eval_batch_size": args.batch_size})
    config = load_config(args.model, "tiny", **{
        "data.cache_dir": args.cache_dir, "train.data_parallel": args.data_parallel,
        "train.stage_order": "relations", **steps, **distributed})
    writer = RecordingWriter()
    exp, params = run_stages(config, args.workdir, writer)
    results = None
    if args.evaluate:
        from sgg_jax.io_utils import json_safe
        from sgg_jax.training import eval_loop

        results = json_safe(eval_loop.evaluate(exp, params))
    params = flat_params(params)
    if jax.process_index() == 0:
        np.savez(args.output, **params)
        if args.metrics:
            with open(args.metrics, "w") as f:
                json.dump({"train": writer.rows, "eval": results}, f)


if __name__ == "__main__":
    main()
