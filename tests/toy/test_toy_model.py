"""Adding a model: a toy model registered from outside the library (tests/toy/toy_model.py,
its config tests/toy/toy_config.py) passes the model contract, broken variants of it fail it,
and it trains and evaluates through the CLI with no edit to the library."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import test_model_contract as contract  # noqa: E402
import toy_model  # noqa: E402  (registers "toy")
from training_utils import REPO, load_config  # noqa: E402

MODES = ("predcls", "sgcls", "sgdet")
CHECKS = (contract.test_parameters_belong_to_declared_groups, contract.test_padding_is_invariant,
          contract.test_permuting_objects_permutes_outputs,
          contract.test_permuting_pairs_permutes_outputs,
          contract.test_sgcls_reads_no_labels_and_compiles_once)


def _config():
    return load_config("imp", "tiny").model


@pytest.mark.parametrize("mode", MODES)
def test_the_toy_model_passes_the_contract(mode):
    case = contract.make_case(toy_model.SPEC, mode, _config())
    for check in CHECKS:
        check(case)


@pytest.mark.parametrize("flaw, failing", [
    ("pairs", "permuting"), ("labels", "reads_no_labels")])
def test_the_contract_rejects_broken_models(flaw, failing):
    """A model that takes its subject by pair position fails the permutation checks; one that
    reads the given labels fails the SGCls check; each passes the others."""
    case = contract.make_case(toy_model.BAD_MODELS[flaw], "sgcls", _config())
    for check in CHECKS:
        if failing in check.__name__:
            with pytest.raises(AssertionError):
                check(case)
        elif not (flaw == "pairs" and "padding" in check.__name__):
            check(case)


def _main(*args):
    return subprocess.run([sys.executable, "-m", "sgg_jax.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_toy_model_trains_and_evaluates_through_the_cli(tmp_path):
    workdir = tmp_path / "toy"
    config = os.path.join(HERE, "toy_config.py:tiny")
    out = _main("--config", config, "--workdir", str(workdir),
                f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.train.data_parallel=1",
                "--config.train.stages.objects.num_steps=2",
                "--config.train.stages.relations.num_steps=2", "--config.eval.num_pictures=0")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert {"predcls", "sgcls"} <= set(results)
    assert results["predcls"]["num_images"] > 0
    # The run's directory alone: its config.json names the module that registers "toy".
    again = _main("--mode", "eval", "--workdir", str(workdir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((workdir / "results.json").read_text()) == results
    # An unknown model is refused before any data is made, listing the registered ones.
    bad = _main("--config", config, "--workdir", str(tmp_path / "bad"),
                f"--config.data.cache_dir={tmp_path / 'cache2'}", "--config.model.name=nosuch",
                "--config.model.module=")
    from sgg_jax.models import registry
    builtin = ", ".join(sorted(registry.BUILTIN_MODULES))
    assert bad.returncode == 2 and f"registered models: {builtin} (" in bad.stderr, bad.stderr
    assert not os.path.exists(tmp_path / "cache2")


@pytest.mark.parametrize("trainable, moved", [
    ("refine", {"refine"}), ("base/relation_head,refine", {"refine", "base/relation_head"})])
def test_a_model_on_top_of_another_run_s_model(tmp_path, trainable, moved):
    """The wrapper's base comes from another run's checkpoint (restore_from + restore_into);
    the stage trains only what `trainable` names, down to a group inside the base."""
    import numpy as np

    from training_utils import finished_run, flat_params, run_stages

    common = {"data.cache_dir": str(tmp_path / "cache"), "train.data_parallel": 1,
              "train.stage_order": "relations", "train.stages.relations.num_steps": 2,
              "eval.num_pictures": 0}
    base_params = flat_params(finished_run(load_config("imp", "tiny", **common),
                                            tmp_path / "base"))
    config = load_config("imp", "tiny", **common, **{
        "model.name": "toy_wrapper", "model.module": os.path.join(HERE, "toy_model.py"),
        "train.stages.relations.trainable": trainable,
        "train.stages.relations.restore_from": str(tmp_path / "base"),
        "train.stages.relations.restore_into": "base"})
    with config.unlocked():
        config.model.base = load_config("imp", "tiny").model
    _, params = run_stages(config, str(tmp_path / "wrapper"))
    got = flat_params(params)
    for key, value in base_params.items():
        group = "base/relation_head" if key.startswith("['relation_head']") else "base"
        changed = not np.array_equal(got["['base']" + key], value)
        assert changed == (group in moved), (key, changed)
    assert any("['refine']" in k and np.any(got[k] != 0) for k in got)  # it trained
