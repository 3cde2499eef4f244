"""The one entry point: `python -m sgg_jax.main --config configs/<model>.py[:preset] --workdir DIR`.

A thin layer over the Python API (sgg_jax/api.py: `train`, `evaluate_run`): flags become a
config and the same calls; a `ValueError` there becomes one `error:` line and exit 2.

Modes (`--mode`, default from the config): `train` runs every stage (resuming where a previous
run in the same workdir stopped) and then evaluates; `eval` evaluates a finished run
(`--checkpoint`, default the workdir) with the config it was trained with (its config.json;
`--config` is optional there); `predict` writes a scene graph (JSON + PNG) per image of
`--images` into `--output` (sgg_jax/predict.py) from the run directory alone. Any config field
can be overridden with `--config.<key>=<value>`; unknown keys are rejected, and in eval /
predict only evaluation fields may differ from the run's (sgg_jax/training/runs.py).
"""
from __future__ import annotations

import difflib
import logging
import os
import re
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
                    "stage's checkpoint directory (overrides config.eval.checkpoint; default "
                    "the workdir).")
flags.DEFINE_string("images", None, "For --mode=predict: comma-separated image files or folders "
                    "(overrides config.predict.images).")
flags.DEFINE_string("boxes", None, "For --mode=predict: a JSON file of each image's boxes "
                    '({"photo.jpg": {"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}}, '
                    "labels optional): the model relates these boxes instead of detecting "
                    "(PredCls with labels, SGCls without).")
flags.DEFINE_string("output", None, "For --mode=predict: directory for <stem>.json and "
                    "<stem>.png (overrides config.predict.output).")


def default_workdir(config_arg: str) -> str:
    """runs/<config file stem>[-<preset>] relative to the current directory."""
    path, _, preset = config_arg.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}-{preset}" if preset else stem)


def _explicit_keys() -> list[str]:
    """The dotted config keys set on the command line (`--config.x=...`)."""
    if FLAGS.config is None:
        return []
    return sorted(config_flags.get_override_values(FLAGS["config"]))


def _run_root(config, workdir: str | None) -> str:
    root = FLAGS.checkpoint or (config.eval.checkpoint if config is not None else "") or workdir
    if not root:
        raise app.UsageError("--mode eval / predict: give the run with --checkpoint or --workdir")
    return root


class _OneLineBackgroundErrors(logging.Filter):
    """Drops the tracebacks Orbax logs when a background checkpoint write fails (the trainer
    reports that failure itself, as one error naming the step that is intact); the log lines
    stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_OneLineBackgroundErrors())
    # JAX logs each accelerator plugin it probes and does not find (libtpu on a CPU machine)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    config = FLAGS.config
    mode = FLAGS.mode or (config.mode if config is not None else None)
    if config is None and mode not in ("eval", "predict"):
        raise app.UsageError("--config is required for training, e.g. --config configs/imp.py "
                             "(--mode eval / predict read the run's own config)")
    if config is not None:
        with config.unlocked():
            config.mode = mode
            if FLAGS.checkpoint:
                config.eval.checkpoint = FLAGS.checkpoint
    workdir = FLAGS.workdir or (default_workdir(FLAGS["config"].config_filename)
                                if config is not None else None)
    tune = config.runtime.tune_host_allocator if config is not None else True
    if tune:
        runtime.tune_host_allocator()
    # Imported late: flags parsed first, XLA_FLAGS honoured.
    from sgg_jax import api, predict
    from sgg_jax.training import preemption
    explicit = _explicit_keys() + ["mode", "eval.checkpoint"]
    try:
        if mode == "train":
            api.train(config, workdir, explicit)
        elif mode == "eval":
            api.evaluate_run(_run_root(config, workdir), config, workdir=FLAGS.workdir,
                             explicit=explicit)
        elif mode == "predict":
            return predict.run_cli(config, _run_root(config, workdir),
                                   FLAGS.images or (config.predict.images if config else ""),
                                   FLAGS.output or (config.predict.output if config else ""),
                                   explicit=explicit, boxes=FLAGS.boxes or "")
        else:
            raise app.UsageError(f"config.mode={mode!r}: expected train, eval or predict")
    except preemption.Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return preemption.EXIT_PREEMPTED
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: a full disk, permissions
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


_TYPE_ERRORS = (("invalid literal for int()", "expected an integer"),
                ("could not convert string to float", "expected a number"),
                ("Non-boolean argument", "expected true or false"))


def flag_error_message(error: BaseException, argv: list[str]) -> str:
    """One line for what went wrong while reading the flags and building the config (absl and
    ml_collections report it with a traceback or a multi-line dump)."""
    text = str(error).strip()
    if "Error whilst parsing config file" in text:  # the config file's get_config raised
        where = text.split(": Error whilst", 1)[0].removeprefix("flag ")
        raised = re.findall(r"^\w*(?:Error|Exception): (.+)$", text, re.M)
        return f"{where}: {raised[-1] if raised else text.splitlines()[-1]}"
    missing = re.search(r"No such file or directory: '([^']+)'", text)
    if missing:
        return f"--config {missing.group(1)}: no such config file"
    if isinstance(error, AttributeError):  # an override of a field the config does not have
        text = text.strip("'\"").replace("\\n", "\n").replace("\\'", "'")
        field = text.split("\n")[0].strip("'\"")
        keys = [a.split("=", 1)[0].removeprefix("--config.") for a in argv
                if a.startswith("--config.")]
        key = next((k for k in keys if k.split(".")[-1] == field), field)
        hint = re.search(r'Did you mean "([^"]+)"', text)
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        near = f"; did you mean {parent}{hint.group(1)}?" if hint else ""
        return f"--config.{key}: the config has no such field{near}"
    unknown = re.match(r"Unknown command line flag '([^']+)'", text)
    if unknown:
        close = difflib.get_close_matches(unknown.group(1), list(FLAGS), n=1)
        return (f"--{unknown.group(1)}: no such flag"
                + (f"; did you mean --{close[0]}?" if close else "") + " (--help lists them)")
    value = re.match(r"flag (--\S+?)=(.*?): (.*)$", text, re.S)
    if value:
        why = next((w for pattern, w in _TYPE_ERRORS if pattern in value.group(3)),
                   " ".join(value.group(3).split()))
        return f"{value.group(1)}={value.group(2)}: {why}"
    return " ".join(text.removeprefix("flag ").split())


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one `error:` line and exit 2 instead of a traceback."""
    try:
        rest = FLAGS(argv)
        if FLAGS.config is not None:  # a config file that failed to load raises only when read
            FLAGS.config.get("mode")
        return rest
    except Exception as e:  # noqa: BLE001 - whatever stops the config from being built
        print(f"error: {flag_error_message(e, argv)}", file=sys.stderr)
        sys.exit(2)


def _overrides_without_config(argv: list[str]) -> bool:
    """`--config.<key>=...` given without `--config` (absl would call the flag unknown)."""
    names = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")]
    return any(n.startswith("--config.") for n in names) and "--config" not in names


def run() -> None:
    if _overrides_without_config(sys.argv):
        print("error: --config.<field> overrides need --config: for --mode eval / predict any "
              "config file will do (e.g. --config configs/imp.py): the run's own config.json is "
              "used and only evaluation fields may differ", file=sys.stderr)
        sys.exit(2)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
