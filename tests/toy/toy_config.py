"""The toy model's config (tests/toy/toy_model.py): the base config, the model's name and the
module that registers it; presets as every model's."""
import os

from sgg_jax.config import apply_preset, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "toy"
    c.model.module = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_model.py")
    c.train.stages.relations.trainable = "roi_features,obj_classifier,relation_head,rel_out"
    return apply_preset(c, arg)
