"""Jittable box operations (`sgg_jax.ops.boxes`) and fixed-size NMS (`sgg_jax.ops.nms`).

Import functions from the modules; the package re-exports nothing, so `from sgg_jax.ops import
nms` is always the module (not the function of the same name)."""
