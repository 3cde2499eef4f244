"""Test session setup: 4 emulated CPU devices (must be set before JAX is imported), so the
data-parallel tests run in-process; single-device code is unaffected (it uses device 0)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
