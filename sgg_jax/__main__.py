"""`python -m sgg_jax` is `python -m sgg_jax.main`."""
from sgg_jax.main import run

run()
