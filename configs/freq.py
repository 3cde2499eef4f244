"""Motifs' FREQ baseline: predicate = frequency table[subject class, object class].

Only the object classifier trains (for SGCls); the relation 'head' is the training-set table.
Presets as configs/imp.py: (default), tiny, vg.
"""
from sgg_jax.config import apply_preset, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "freq"
    c.train.stage_order = "detector,objects"
    return apply_preset(c, arg)
