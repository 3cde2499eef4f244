"""Neural Motifs (Zellers et al. 2018, MotifNet) on the built-in synthetic data.

Presets (`--config configs/motifs.py:<preset>`):
  (default)  synthetic data, small ResNet (stride 8), minutes on a laptop CPU.
  tiny       a seconds-long smoke run (tests).
  vg         the published setup's data on a local Visual Genome VG150 copy
             (--config.data.data_dir=...), from pretrained weights as the other vg presets
             (docs/models.md, "Presets"); the LSTM sizes below are this library's, not the
             paper's 512-wide highway LSTMs (--config.model.hidden_dim=512 etc.).
"""
from sgg_jax.config import apply_preset, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "motifs"
    # `leftright` (box centre x), `confidence`, `size` or `random`: the objects' reading order.
    c.model.order = "leftright"
    c.model.hidden_dim = 128
    c.model.embed_dim = 64
    c.model.pos_dim = 32
    c.model.obj_layers = 1
    c.model.edge_layers = 1
    c.model.freq_bias = True
    return apply_preset(c, arg)
