"""Test session setup: 4 emulated CPU devices (must be set before JAX is imported), so the
data-parallel tests run in-process; single-device code is unaffected (it uses device 0)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA cache for the whole session (and its subprocesses): the training tests run
# the same programs several times (reference, interrupted, resumed runs).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sgg_jax_xla_cache_")
