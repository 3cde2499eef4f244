"""The training system on the tiny preset: loss goes down, data parallelism is exact, resume is
exact, non-finite losses stop the run, and the trained model is evaluated end to end."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.training import data as data_lib
from sgg_jax.training import mesh as mesh_lib
from sgg_jax.training import optim, trainer
from sgg_jax.training.steps import TrainState, make_train_step, sample_training_pairs, \
    model_inputs, compute_losses
from training_utils import REPO, flat_params, load_config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sgg_cache"))


def tiny(cache_dir, name="imp", **overrides):
    return load_config(name, "tiny", **{"data.cache_dir": cache_dir, **overrides})


def test_few_steps_reduce_loss_on_a_fixed_batch(cache_dir):
    config = tiny(cache_dir)
    exp = trainer.setup(config, os.path.join(cache_dir, "wd_loss"))
    params = trainer.init_params(exp, jax.random.key(0))
    stage = config.train.stages.relations
    tx = optim.make_optimizer(stage, config.train, params)
    model = exp.model(exp.train_mode)
    kw = dict(num_rels=config.sampling.num_rels, fg_fraction=0.25, must_overlap=False)
    step = jax.jit(make_train_step(model, tx, loss_names=("object", "relation"), edge_kind="baseline",
                                   obj_weight=1.0, rel_weight=1.0, **kw))
    batch = jax.tree.map(jnp.asarray, next(iter(data_lib.train_loader(config, exp.data, exp.mesh, seed=0))))

    def loss_at(p):  # same sampled pairs every time
        pairs, labels, mask = sample_training_pairs(jax.random.key(7), batch, **kw)
        out = model.apply({"params": p}, model_inputs(batch, pairs, mask), train=False)
        return float(compute_losses(out, batch, labels, mask, loss_names=("object", "relation"),
                                    edge_kind="baseline", obj_weight=1.0, rel_weight=1.0)[0])

    state = TrainState.create(params, tx)
    before = loss_at(state.params)
    for _ in range(12):
        state, metrics = step(state, batch, jax.random.key(1))
    after = loss_at(state.params)
    assert np.isfinite(after)
    assert after < 0.8 * before, (before, after)


def _train(config, workdir):
    exp = trainer.setup(config, workdir)
    params = trainer.init_params(exp, jax.random.key(config.seed))
    writer = trainer.reporting.MetricWriter(os.path.join(workdir, "tb"))
    for i, name in enumerate(optim.split_list(config.train.stage_order)):
        params = trainer.train_stage(exp, name, params, jax.random.fold_in(jax.random.key(1), i),
                                     writer, i)
    writer.close()
    return flat_params(params)


def test_four_devices_match_one_device(cache_dir, tmp_path):
    assert jax.device_count() >= 4, "conftest sets 4 emulated CPU devices"
    one = _train(tiny(cache_dir, **{"train.data_parallel": 1}), str(tmp_path / "one"))
    four = _train(tiny(cache_dir, **{"train.data_parallel": 4}), str(tmp_path / "four"))
    assert one.keys() == four.keys()
    for k in one:
        np.testing.assert_allclose(one[k], four[k], rtol=2e-4, atol=2e-5, err_msg=k)


class _Interrupt(Exception):
    pass


def test_interrupt_and_resume_is_exact(cache_dir, tmp_path, monkeypatch):
    config = tiny(cache_dir, **{"train.data_parallel": 1})
    reference = _train(config, str(tmp_path / "ref"))

    # Interrupt the second stage after 5 of its 6 steps (last checkpoint: step 4), then resume.
    real_to_global = mesh_lib.to_global
    calls = {"n": 0}
    total_before_interrupt = config.train.stages.objects.num_steps + 5

    def flaky(tree, mesh):
        calls["n"] += 1
        if calls["n"] > total_before_interrupt:
            raise _Interrupt()
        return real_to_global(tree, mesh)

    monkeypatch.setattr(mesh_lib, "to_global", flaky)
    with pytest.raises(_Interrupt):
        _train(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(mesh_lib, "to_global", real_to_global)
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints" / "relations")) == ["2", "4"]
    resumed = _train(config, str(tmp_path / "resumed"))
    for k in reference:
        np.testing.assert_array_equal(reference[k], resumed[k], err_msg=k)


def test_nonfinite_loss_stops_with_clear_message(cache_dir, tmp_path):
    config = tiny(cache_dir, **{"train.data_parallel": 1, "train.stage_order": "objects",
                                "train.stages.objects.learning_rate": float("nan")})
    with pytest.raises(trainer.NonFiniteLossError, match="NaN/Inf"):
        _train(config, str(tmp_path / "nan"))


def test_end_to_end_main_writes_results(cache_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "sgg_jax.main", "--config", os.path.join(REPO, "configs/imp.py:tiny"),
           "--workdir", str(workdir), f"--config.data.cache_dir={cache_dir}",
           "--config.loss.edge=dnorm"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert set(results) == {"predcls", "sgcls"}
    for mode in results:
        for k in (20, 50, 100):
            assert 0.0 <= results[mode][f"R@{k}"] <= 100.0
        assert results[mode]["R@20"] <= results[mode]["R@50"] <= results[mode]["R@100"]
    assert "R@50" in out.stdout
    assert any(f.startswith("events") for f in os.listdir(workdir / "tensorboard"))
    # eval mode on the finished run reproduces the same numbers
    out2 = subprocess.run(cmd + ["--mode", "eval"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert out2.returncode == 0, out2.stderr[-3000:]
    assert json.loads((workdir / "results.json").read_text()) == results


def test_unknown_config_key_is_rejected(tmp_path):
    cmd = [sys.executable, "-m", "sgg_jax.main", "--config", os.path.join(REPO, "configs/imp.py:tiny"),
           "--workdir", str(tmp_path), "--config.model.hiden_dim=3"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "hiden_dim" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(cache_dir, tmp_path):
    """2 processes x 2 CPU devices (gloo, localhost coordinator) == 1 process x 4 devices."""
    single = _train(tiny(cache_dir, **{"train.data_parallel": 4}), str(tmp_path / "single"))
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = []
    for pid in range(2):
        cmd = [sys.executable, os.path.join(REPO, "tests", "multiprocess_train.py"),
               "--cache-dir", cache_dir, "--workdir", str(tmp_path / "multi"),
               "--coordinator", f"127.0.0.1:{port}", "--process-id", str(pid),
               "--output", str(tmp_path / f"params{pid}.npz")]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    multi = dict(np.load(tmp_path / "params0.npz"))
    assert multi.keys() == single.keys()
    for k in single:
        np.testing.assert_allclose(single[k], multi[k], rtol=2e-4, atol=2e-5, err_msg=k)
