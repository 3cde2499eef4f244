"""The one entry point: `python -m sgg_jax.main --config configs/<model>.py[:preset] --workdir DIR`.

Modes (`--mode`, default from the config): `train` runs every stage (resuming where a previous
run in the same workdir stopped) and then evaluates; `eval` evaluates a finished run's
checkpoint (`--checkpoint`, default the workdir); `predict` writes a scene graph (JSON + PNG)
per image of `--images` into `--output` (sgg_jax/predict.py). Any config field can be
overridden with `--config.<key>=<value>`; unknown keys are rejected.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from sgg_jax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Model config file, e.g. configs/imp.py[:preset].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results.json go "
                    "(default: runs/<config>-<preset>).")
flags.DEFINE_enum("mode", None, ["train", "eval", "predict"], "Overrides config.mode.")
flags.DEFINE_string("checkpoint", None, "For --mode=eval/predict: a training workdir or a "
                    "stage's checkpoint directory (overrides config.eval.checkpoint).")
flags.DEFINE_string("images", None, "For --mode=predict: comma-separated image files or folders "
                    "(overrides config.predict.images).")
flags.DEFINE_string("output", None, "For --mode=predict: directory for <stem>.json and "
                    "<stem>.png (overrides config.predict.output).")


def default_workdir(config_arg: str) -> str:
    """runs/<config file stem>[-<preset>] relative to the current directory."""
    path, _, preset = config_arg.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}-{preset}" if preset else stem)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/imp.py")
    with config.unlocked():
        if FLAGS.mode:
            config.mode = FLAGS.mode
        if FLAGS.checkpoint:
            config.eval.checkpoint = FLAGS.checkpoint
    workdir = FLAGS.workdir or default_workdir(FLAGS["config"].config_filename)
    if config.runtime.tune_host_allocator:
        runtime.tune_host_allocator()
    if config.mode == "predict":
        from sgg_jax import predict
        try:
            return predict.run_cli(config, config.eval.checkpoint or workdir,
                                   FLAGS.images or config.predict.images,
                                   FLAGS.output or config.predict.output)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    from sgg_jax.training import trainer  # imported late: flags parsed first, XLA_FLAGS honoured
    try:
        if config.mode == "train":
            trainer.train_and_evaluate(config, workdir)
        elif config.mode == "eval":
            trainer.evaluate_checkpoint(config, workdir)
        else:
            raise app.UsageError(f"config.mode={config.mode!r}: expected train, eval or predict")
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
