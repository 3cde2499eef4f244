"""sgg_jax: scene graph generation in JAX."""
