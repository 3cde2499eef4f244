"""KERN (Chen et al. 2019, knowledge-embedded routing) on the built-in synthetic data.

Presets (`--config configs/kern.py:<preset>`):
  (default)  synthetic data, small ResNet (stride 8), minutes on a laptop CPU.
  tiny       a seconds-long smoke run (tests).
  vg         the published setup's data on a local Visual Genome VG150 copy
             (--config.data.data_dir=...), from pretrained weights as the other vg presets
             (docs/models.md, "Presets"); KERN's GGNNs are 512 wide there
             (--config.model.hidden_dim=512); this preset keeps the library's stages.
"""
from sgg_jax.config import apply_preset, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "kern"
    c.model.hidden_dim = 64
    c.model.obj_steps = 3
    c.model.rel_steps = 3
    return apply_preset(c, arg)
