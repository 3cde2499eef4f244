"""Failure and recovery: a SIGTERM / SIGINT while a stage trains checkpoints the step it
finished and stops (`preemption.Preempted`; the CLI exits with EXIT_PREEMPTED and says how to
resume); resuming gives the uninterrupted run's parameters bit for bit, for a one-optimizer
run of two stages and a stage stepping two optimizers; a second process on a workdir in use
is refused, and a killed holder leaves no stale lock."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sgg_jax.training import experiment, preemption, runs
from training_utils import REPO, flat_params, load_config, run_stages, two_optimizer_config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("preempt_cache"))


CONFIGS = {
    "two stages, one optimizer each": lambda cache: load_config(
        "imp", "tiny", **{"data.cache_dir": cache, "train.data_parallel": 1}),
    "one stage, two optimizers": two_optimizer_config,
}


def signal_at(monkeypatch, call: int, signum: int) -> None:
    """Sends this process `signum` while the trainer fetches its `call`-th batch (during that
    step, before it runs)."""
    from sgg_jax.training import mesh as mesh_lib

    real, calls = mesh_lib.to_global, {"n": 0}

    def sending(tree, mesh):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return real(tree, mesh)

    monkeypatch.setattr(mesh_lib, "to_global", sending)


@pytest.fixture(scope="module")
def uninterrupted(cache_dir, tmp_path_factory):
    """case -> the final parameters of an uninterrupted run (computed once per module)."""
    done = {}

    def params(case: str) -> dict[str, np.ndarray]:
        if case not in done:
            done[case] = flat_params(run_stages(CONFIGS[case](cache_dir),
                                                str(tmp_path_factory.mktemp("ref")))[1])
        return done[case]
    return params


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_signal_checkpoints_its_step_and_resuming_is_exact(case, cache_dir, tmp_path,
                                                             monkeypatch, uninterrupted):
    config = CONFIGS[case](cache_dir)
    reference = uninterrupted(case)
    plans = experiment.plan_stages(config, experiment.validate(config))
    # a step chosen at random among all steps of all stages, the very last one excepted (a
    # signal during a stage's last step stops at its end, before the next stage)
    seed = random.randrange(1 << 30)
    total = sum(p.num_steps for p in plans)
    call = random.Random(seed).randrange(1, total)
    signum = random.Random(seed).choice([signal.SIGTERM, signal.SIGINT])
    stage, step = next((p, call - sum(q.num_steps for q in plans[:i]))
                       for i, p in enumerate(plans)
                       if call <= sum(q.num_steps for q in plans[:i + 1]))
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    workdir = tmp_path / "run"
    signal_at(monkeypatch, call, signum)
    with pytest.raises(preemption.Preempted) as stopped:
        run_stages(config, str(workdir))
    monkeypatch.undo()
    info = f"seed {seed}: signal {signum} at batch {call} = {stage.name} step {step}"
    assert (stopped.value.stage, stopped.value.step) == (stage.name, step), info
    assert stopped.value.signal_name == signal.Signals(signum).name
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    stage_dir = runs.stage_dir(str(workdir), stage.name)
    assert runs.checkpoint_steps(stage_dir)[-1] == step, info
    assert (runs.finished_step(stage_dir) is None) == (step < stage.num_steps), info
    resumed = flat_params(run_stages(config, str(workdir))[1])
    assert reference.keys() == resumed.keys()
    for k in reference:
        np.testing.assert_array_equal(reference[k], resumed[k], err_msg=f"{k}; {info}")


@pytest.mark.slow
def test_the_cli_stops_with_its_exit_code_and_the_same_command_resumes(cache_dir, tmp_path):
    """A real SIGTERM from outside, once the relation stage has saved its first checkpoint:
    exit EXIT_PREEMPTED with one line saying where it stopped; the same command finishes."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "sgg_jax.main", "--config", "configs/imp.py:tiny",
           "--workdir", str(workdir), f"--config.data.cache_dir={cache_dir}",
           "--config.train.data_parallel=1", "--config.train.stages.relations.num_steps=40",
           "--config.train.checkpoint_every=2", "--config.eval.num_pictures=0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    relations = workdir / "checkpoints" / "relations"
    deadline = time.monotonic() + 300
    while not (relations.exists() and runs.checkpoint_steps(str(relations))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == preemption.EXIT_PREEMPTED, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("preempted:")]
    assert len(lines) == 1 and "stopped by SIGTERM in stage 'relations'" in lines[0]
    assert "run the same command again to resume" in lines[0] and "Traceback" not in err
    stopped_at = runs.checkpoint_steps(str(relations))[-1]
    assert f"at step {stopped_at} of 40" in lines[0] and stopped_at < 40
    assert not (workdir / "results.json").exists()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in again.stderr
    assert (workdir / "results.json").exists()


def test_a_workdir_in_use_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sgg_jax.training import runs\n"
        "with runs.workdir_lock(sys.argv[1]):\n"
        "    print('locked', flush=True); time.sleep(600)"), str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.WorkdirBusyError, match=f"in use by another process \\(pid "
                                                        f"{holder.pid} on "):
            with runs.workdir_lock(str(tmp_path)):
                pass
    finally:
        holder.kill()  # kill -9: no chance to clean up
        holder.wait()
    with runs.workdir_lock(str(tmp_path)):  # the kernel released it
        with pytest.raises(runs.WorkdirBusyError):
            with runs.workdir_lock(str(tmp_path)):  # and it excludes within one process too
                pass


def _damage(directory) -> int:
    """Truncates every file of a saved step to half its size; returns how many."""
    count = 0
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            count += 1
    return count


def test_a_damaged_or_foreign_checkpoint_is_named_and_the_fallback_resumes_exactly(
        cache_dir, tmp_path):
    import shutil

    from sgg_jax.training.checkpointing import CheckpointError

    overrides = {"data.cache_dir": cache_dir, "train.data_parallel": 1,
                 "train.stage_order": "relations", "train.checkpoint_every": 2}
    config = load_config("imp", "tiny", **overrides)
    reference = flat_params(run_stages(config, str(tmp_path / "ref"))[1])
    stage = tmp_path / "ref" / "checkpoints" / "relations"
    steps = runs.checkpoint_steps(str(stage))
    assert len(steps) == 2, steps
    last, earlier = steps[-1], steps[0]

    # another config's parameters (shapes differ): refused, naming the checkpoint
    shutil.copytree(tmp_path / "ref", tmp_path / "foreign")
    with pytest.raises(CheckpointError, match=f"relations/{last} cannot be restored"):
        run_stages(load_config("imp", "tiny", **overrides, **{"model.hidden_dim": 48}),
                   str(tmp_path / "foreign"))

    # a truncated last step: refused, naming it and the earlier step; nothing changed
    shutil.copytree(tmp_path / "ref", tmp_path / "run")
    damaged = tmp_path / "run" / "checkpoints" / "relations"
    assert _damage(damaged / str(last)) > 0
    with pytest.raises(CheckpointError, match=rf"{last} cannot be restored.*Earlier steps "
                                              rf"\[{earlier}\]"):
        run_stages(config, str(tmp_path / "run"))
    assert runs.checkpoint_steps(str(damaged)) == steps

    # the fallback moves it aside (kept) and resumes from the step before: the same result
    fallback = load_config("imp", "tiny", **overrides, **{"train.restore_fallback": True})
    resumed = flat_params(run_stages(fallback, str(tmp_path / "run"))[1])
    assert [p for p in os.listdir(damaged) if p.startswith(f"{last}.damaged-")]
    assert runs.finished_step(str(damaged)) == last
    for k in reference:
        np.testing.assert_array_equal(reference[k], resumed[k], err_msg=k)

    # an empty step directory (a save that never wrote anything) is named too
    os.makedirs(damaged / str(last + 10))
    with pytest.raises(CheckpointError, match=rf"relations/{last + 10} cannot be restored"):
        run_stages(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_to_the_uninterrupted_results(cache_dir, tmp_path):
    """A tiny two-stage run killed outright during a training step, right after a checkpoint
    save started, and between results.json's temporary file and its rename, restarted after
    each: no partial state is ever restored (each restart runs), results.json is complete or
    absent after every kill, and the final results equal an uninterrupted run's."""
    import json

    args = ["--config", "configs/imp.py:tiny", f"--config.data.cache_dir={cache_dir}",
            "--config.train.data_parallel=1", "--config.train.checkpoint_every=2",
            "--config.eval.num_pictures=0"]
    main = [sys.executable, "-m", "sgg_jax.main"]
    ref = subprocess.run([*main, *args, "--workdir", str(tmp_path / "ref")], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    config = load_config("imp", "tiny")
    total = sum(int(config.train.stages[s].num_steps) for s in ("objects", "relations"))
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    workdir = tmp_path / "run"
    kills = [("step", rng.randrange(1, total)), ("save", rng.randrange(1, total // 2)),
             ("results", 1)]
    for moment, n in kills:
        out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "kill_run.py"),
                              moment, str(n), "--", *args, "--workdir", str(workdir)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
        info = f"seed {seed}, kill at {moment} {n}"
        # a restart may finish before its n-th save (it resumed past it): then rc 0
        assert out.returncode in (0, -signal.SIGKILL), f"{info}: {out.stderr[-3000:]}"
        if (workdir / "results.json").exists():  # complete, or absent
            json.loads((workdir / "results.json").read_text())
        else:
            assert out.returncode == -signal.SIGKILL, info
    final = subprocess.run([*main, *args, "--workdir", str(workdir)], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    got = json.loads((workdir / "results.json").read_text())
    want = json.loads((tmp_path / "ref" / "results.json").read_text())
    for mode in ("predcls", "sgcls"):
        assert got[mode] == want[mode], f"seed {seed}: {mode}"


def test_a_failed_save_keeps_the_previous_checkpoint_and_says_so(cache_dir, tmp_path,
                                                                  monkeypatch, uninterrupted):
    """A full disk (ENOSPC) during the objects stage's second save, then a lost permission
    (EACCES) during the relation stage's first: each stops the run with a CheckpointError
    naming the failed step and the intact one (or that none is saved), the failed step never
    becomes a checkpoint, and the reruns end with the uninterrupted run's parameters."""
    import errno

    from kill_run import fail_writes_of_save
    from sgg_jax.training.checkpointing import CheckpointError
    config = CONFIGS["two stages, one optimizer each"](cache_dir)
    reference = uninterrupted("two stages, one optimizer each")
    plans = {p.name: p for p in experiment.plan_stages(config, experiment.validate(config))}
    every = int(config.train.checkpoint_every)
    assert plans["objects"].num_steps > every  # the objects stage saves twice
    workdir = tmp_path / "run"
    objects, relations = (runs.stage_dir(str(workdir), s) for s in ("objects", "relations"))
    for n, code, stage_dir, step, intact in [
            (2, errno.ENOSPC, objects, plans["objects"].num_steps, every),
            (2, errno.EACCES, relations, every, None)]:  # saves counted from the rerun's start
        fail_writes_of_save(n, code, monkeypatch.setattr)
        with pytest.raises(CheckpointError) as failed:
            run_stages(config, str(workdir))
        monkeypatch.undo()
        message = str(failed.value)
        assert f"{stage_dir}: saving the checkpoint of step {step} failed" in message, message
        assert os.strerror(code) in message
        if intact is None:
            assert "No earlier checkpoint of this stage is saved" in message, message
            assert runs.checkpoint_steps(stage_dir) == []
        else:
            assert f"The checkpoint of step {intact} is intact" in message, message
            assert runs.checkpoint_steps(stage_dir) == [intact]
        assert os.path.isdir(os.path.join(stage_dir, f"{step}.orbax-checkpoint-tmp"))
        assert runs.finished_step(stage_dir) is None
    resumed = flat_params(run_stages(config, str(workdir))[1])
    assert reference.keys() == resumed.keys()
    for k in reference:
        np.testing.assert_array_equal(resumed[k], reference[k], err_msg=k)


def test_the_cli_reports_a_full_disk_in_one_line(cache_dir, tmp_path):
    """Through the CLI: exit 2, one `error:` line, no traceback (Orbax's own logs of the
    failure keep their lines but lose their tracebacks)."""
    cmd = [sys.executable, os.path.join(REPO, "tests", "kill_run.py"), "full", "1", "--",
           "--config", "configs/imp.py:tiny", "--workdir", str(tmp_path / "run"),
           f"--config.data.cache_dir={cache_dir}", "--config.train.data_parallel=1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert "saving the checkpoint of step" in errors[0] and "No space left on device" in \
        errors[0] and "No earlier checkpoint of this stage is saved" in errors[0], errors[0]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
