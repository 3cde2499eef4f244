"""The Python API (sgg_jax.get_config / train / evaluate_run): what it returns is what the run
wrote, evaluating the finished run again gives the same numbers, and a bad field is a
ValueError naming it, as the CLI's exit 2."""
from __future__ import annotations

import json

import pytest

import sgg_jax


@pytest.fixture(scope="module")
def freq_run(tmp_path_factory):
    """The tiny FREQ preset trained through the API (its one stage, `objects`, 6 steps)."""
    root = tmp_path_factory.mktemp("api")
    config = sgg_jax.get_config("configs/freq.py:tiny")
    config.data.cache_dir = str(root / "cache")
    config.eval.num_pictures = 0
    workdir = root / "run"
    return workdir, sgg_jax.train(config, str(workdir))


def test_train_returns_what_results_json_holds(freq_run):
    workdir, results = freq_run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert {"predcls", "sgcls", "ground_truth"} <= set(results)
    assert results["sgcls"]["R@50"] >= 0 and results["ground_truth"]["images"] > 0
    assert results == on_disk  # undefined metrics (empty few-shot buckets) are None in both
    assert any(v is None for v in results["sgcls"].values())
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["mode"] == "train" and saved["model"]["name"] == "freq"


def test_evaluate_run_reproduces_the_training_numbers(freq_run, tmp_path):
    workdir, results = freq_run
    again = sgg_jax.evaluate_run(str(workdir), {"eval.num_pictures": 0},
                                 workdir=str(tmp_path / "eval"))
    assert again == results
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == results
    # one mode only: the same numbers for it, the other mode not evaluated
    sgcls = sgg_jax.evaluate_run(str(workdir / "checkpoints" / "objects"),
                                 {"eval.modes": "sgcls", "eval.num_pictures": 0},
                                 workdir=str(tmp_path / "sgcls"))
    assert "predcls" not in sgcls
    assert sgcls["sgcls"] == results["sgcls"]


@pytest.mark.parametrize("field, value, message", [
    ("input.batch_size", 0, "config.input.batch_size=0: expected a positive number"),
    ("loss.edge", "dnrom", "config.loss.edge='dnrom': expected one of"),
    ("train.stages.objects.learning_rate", -1.0,
     "config.train.stages.objects.learning_rate=-1.0: expected zero or more"),
    ("eval.modes", "predcls,sgdett", "config.eval.modes='predcls,sgdett'"),
])
def test_a_bad_field_is_a_value_error_naming_it(tmp_path, field, value, message):
    config = sgg_jax.get_config("imp:tiny", {"data.cache_dir": str(tmp_path / "cache")})
    node = config
    *path, last = field.split(".")
    for p in path:
        node = node[p]
    setattr(node, last, value)
    with pytest.raises(ValueError) as e:
        sgg_jax.train(config, str(tmp_path / "run"))
    assert message in str(e.value)
    assert not (tmp_path / "cache").exists()  # refused before any data was generated


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="'model.hiden_dim' does not exist"):
        sgg_jax.get_config("configs/imp.py:tiny", {"model.hiden_dim": 3})
    with pytest.raises(ValueError, match="config.input.batch_size='x'"):
        sgg_jax.get_config("imp:tiny", {"input.batch_size": "x"})
    with pytest.raises(FileNotFoundError, match="'configs/nope.py': no such config file"):
        sgg_jax.get_config("configs/nope.py:tiny")
    with pytest.raises(ValueError, match="unknown preset 'small'"):
        sgg_jax.get_config("imp:small")


def test_evaluate_run_refuses_training_fields_and_unknown_keys(freq_run):
    workdir, _ = freq_run
    with pytest.raises(ValueError, match="model.hidden_dim=64"):
        sgg_jax.evaluate_run(str(workdir), {"model.hidden_dim": 64})
    with pytest.raises(ValueError, match="'eval.nope' does not exist"):
        sgg_jax.evaluate_run(str(workdir), {"eval.nope": 1})
