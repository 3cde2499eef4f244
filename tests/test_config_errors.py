"""Config errors end in one `error:` line naming the field, exit 2, before any data is
generated or anything compiles: unknown presets and files, unknown fields (with the close
match), wrong types over every scalar field of every model's config, and out-of-range values."""
from __future__ import annotations

import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from sgg_jax.main import flag_error_message
from sgg_jax.models import registry
from sgg_jax.training import experiment
from training_utils import REPO, load_config

CONFIGS = ("freq", "imp", "kern", "motifs", "msdn", "detector")


@pytest.mark.parametrize("args, says", [
    (["--config", "configs/imp.py:nosuch"],
     "--config=configs/imp.py:nosuch: unknown preset 'nosuch': expected one of"),
    (["--config", "configs/nosuch.py"], "--config configs/nosuch.py: no such config file"),
    (["--config", "configs/imp.py:tiny", "--config.model.hiden_dim=3"],
     "--config.model.hiden_dim: the config has no such field; did you mean model.hidden_dim?"),
    (["--config", "configs/imp.py:tiny", "--config.input.batch_size=abc"],
     "--config.input.batch_size=abc: expected an integer"),
    (["--config", "configs/imp.py:tiny", "--config.input.batch_size=-3"],
     "config.input.batch_size=-3: expected a positive number"),
    (["--config", "configs/imp.py:tiny", "--workdri=/tmp/x"],
     "--workdri: no such flag; did you mean --workdir?"),
])
def test_the_cli_says_what_is_wrong_in_one_line(args, says, tmp_path):
    cache = tmp_path / "cache"
    out = subprocess.run([sys.executable, "-m", "sgg_jax.main", *args, "--workdir",
                          str(tmp_path / "run"), f"--config.data.cache_dir={cache}"]
                         if "--config" in args and "nosuch" not in args[1] else
                         [sys.executable, "-m", "sgg_jax.main", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {errors[0][7:]}"] and says in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Unable to initialize backend" not in out.stderr
    assert not cache.exists()  # nothing generated


def _parse(argv: list[str]) -> ml_collections.ConfigDict:
    """The CLI's flag parsing on a fresh flag registry (ml_collections reads sys.argv to
    register the overrides)."""
    saved = sys.argv
    sys.argv = argv
    try:
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                        lock_config=True)
        values(argv)
        return values.config
    finally:
        sys.argv = saved


def _leaves(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("name", CONFIGS)
def test_a_wrong_type_in_any_field_is_named(name):
    """Every bool, int and float field of the config, given a value of the wrong type."""
    path = os.path.join(REPO, "configs", f"{name}.py")
    checked = 0
    for key, value in _leaves(load_config(name, "default")):
        if isinstance(value, bool):
            bad = "maybe"
        elif isinstance(value, (int, float)):
            bad = "abc"
        else:
            continue  # strings take any text (checked where read), sequences parse as given
        argv = ["prog", f"--config={path}", f"--config.{key}={bad}"]
        with pytest.raises(Exception) as raised:
            _parse(argv)
        message = flag_error_message(raised.value, argv)
        assert message.startswith(f"--config.{key}={bad}: expected "), (key, message)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("name", CONFIGS)
def test_out_of_range_values_are_named(name):
    config = load_config(name, "default")
    experiment.check_ranges(config)  # the preset itself is fine
    keys = [k for k, _ in experiment.RANGES] + [
        f"train.stages.{s}.{f}" for s in config.train.stages for f, _ in experiment.STAGE_RANGES]
    for key in keys:
        assert experiment._field(config, key) is not None, f"{key}: not a field of {name}"
        broken = load_config(name, "default", **{key: -1})
        with pytest.raises(ValueError, match=f"config.{key}=-1"):
            experiment.check_ranges(broken)
    with pytest.raises(ValueError, match="config.eval.ks"):
        experiment.check_ranges(load_config(name, "default", **{"eval.ks": (20, 0)}))


@pytest.mark.parametrize("name", CONFIGS)
def test_a_name_outside_its_choices_is_refused_before_any_data(name):
    config = load_config(name, "default")
    experiment.check_choices(config)  # the preset itself is fine
    keys = ["model.backbone", "model.detector.backbone", "loss.edge", "model.dtype"] + [
        f"train.stages.{s}.optimizer" for s in config.train.stages]
    for key in keys:
        with pytest.raises(ValueError, match=f"config.{key}='nope': expected one of"):
            experiment.check_choices(load_config(name, "default", **{key: "nope"}))
    spec = registry.spec_for(config.model)  # the model's own closed sets (ModelSpec.choices)
    for key in spec.choices:
        with pytest.raises(ValueError, match=f"config.model.{key}='nope': expected one of"):
            experiment.validate(load_config(name, "default", **{f"model.{key}": "nope"}),
                                training=False)


def test_every_stage_field_can_be_set_from_the_command_line():
    """Stage fields are set through attribute paths: none may shadow a ConfigDict method (a
    field named `update` could not be set: ConfigDict.update)."""
    path = os.path.join(REPO, "configs", "imp.py")
    argv = ["prog", f"--config={path}:tiny",
            "--config.train.stages.relations.update_rule=alternating"]
    assert _parse(argv).train.stages.relations.update_rule == "alternating"
    for name, stage in load_config("imp", "default").train.stages.items():
        shadowed = [f for f in stage if hasattr(ml_collections.ConfigDict, f)]
        assert not shadowed, (name, shadowed)
