"""Test session setup: 4 emulated CPU devices (must be set before JAX is imported), so the
data-parallel tests run in-process; single-device code is unaffected (it uses device 0);
fixtures several test files share."""
import os

import pytest

# The tests run tiny models for a few steps, so XLA's compile time dominates: LLVM at -O0
# compiles ~30% faster (the tiny IMP train step 15 s -> 10.5 s) and runs fast enough here.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA cache for the whole session (and its subprocesses): the training tests run
# the same programs several times (reference, interrupted, resumed runs).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sgg_jax_xla_cache_")


@pytest.fixture(scope="session")
def tiny_sgdet_run(tmp_path_factory):
    """A tiny IMP + detector run directory: its config.json and a `detector` stage checkpoint of
    the initial parameters (no training step is compiled: this checks the plumbing restore ->
    SGDet -> files, not accuracy). Score threshold 0 keeps the untrained detections."""
    import jax

    from sgg_jax.training import experiment, optim, runs
    from sgg_jax.training.checkpointing import StageCheckpointer
    from sgg_jax.training.steps import TrainState
    from training_utils import load_config

    root = tmp_path_factory.mktemp("predict_run")
    config = load_config("imp", "tiny", **{
        "data.cache_dir": str(root / "cache"), "train.data_parallel": 1, "eval.modes": "sgdet",
        "train.stage_order": "detector", "train.stages.detector.num_steps": 1,
        "model.detector.score_thresh": 0.0})
    workdir = str(root / "run")
    exp = experiment.setup(config, workdir)
    experiment.save_run_files(exp)
    params = experiment.init_params(exp, jax.random.key(0))
    stage = config.train.stages.detector
    state = TrainState.create(params, optim.make_optimizers(stage, config.train, params))
    ckpt = StageCheckpointer(exp.checkpoint_dir("detector"))
    ckpt.save(1, state, None, dict(stage="detector", step=1))
    ckpt.close()
    runs.mark_finished(exp.checkpoint_dir("detector"), "detector", 1, 1)
    return workdir, exp.data


def pytest_collection_modifyitems(items):
    """The tests marked `slow` (half a minute or more: multi-process jobs, CLI runs, the
    notebook) run first, in their order: with `-n 2` the two workers then end on short tests
    instead of one waiting for the other's last long one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
