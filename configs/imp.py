"""IMP (Xu et al. 2017, iterative message passing) on the built-in synthetic data.

Presets (`--config configs/imp.py:<preset>`):
  (default)  synthetic data, small ResNet, a few minutes on a laptop CPU.
  tiny       a seconds-long smoke run (tests).
  vg         the published setup on a local Visual Genome VG150 copy (--config.data.data_dir=...).
"""
from sgg_jax.config import apply_preset, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "imp"
    c.model.hidden_dim = 128
    c.model.num_iterations = 3
    return apply_preset(c, arg)
