"""Runs the tiny training (or, with --eval, the evaluation of the run it trained, as the first
thing the process does) in one process of a multi-process (gloo) job; used by
tests/test_training.py. Process 0 writes the final parameters to --output (npz); with --eval
it writes the run's results.json."""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--process-id", type=int, required=True)
    ap.add_argument("--output", default="")
    ap.add_argument("--eval", action="store_true")
    args = ap.parse_args()
    distributed = {"distributed.coordinator_address": args.coordinator,
                   "distributed.num_processes": 2, "distributed.process_id": args.process_id}
    if args.eval:
        # The run's own config with this job's distributed fields; nothing before this line
        # touches a JAX backend, so jax.distributed.initialize must come first inside.
        from sgg_jax import inference
        from sgg_jax.training import trainer

        overrides = {**distributed, "eval.num_pictures": 0}
        trainer.evaluate_run(inference.run_config(args.workdir, overrides), args.workdir)
        return
    import numpy as np
    from training_utils import load_config
    from test_training import _train

    config = load_config("imp", "tiny", **{
        "data.cache_dir": args.cache_dir, "train.data_parallel": 4,
        "train.stage_order": "relations", **distributed})
    params = _train(config, args.workdir)
    if args.process_id == 0:
        np.savez(args.output, **params)


if __name__ == "__main__":
    main()
