"""IMP (Xu et al. 2017, iterative message passing) on the built-in synthetic data.

Presets (`--config configs/imp.py:<preset>`):
  (default)  synthetic data, small ResNet (stride 8), dnorm edge loss, minutes on a laptop CPU.
  tiny       a seconds-long smoke run (tests).
  vg         the published setup on a local Visual Genome VG150 copy (--config.data.data_dir=...),
             from pretrained weights (--config.model.backbone_weights=..., and
             --config.model.detector.weights=... for SGDet; docs/models.md, "Presets").
"""
from sgg_jax.config import apply_preset, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "imp"
    c.model.hidden_dim = 128
    c.model.num_iterations = 3
    # Knyazev et al.'s density-normalised edge loss (its effect on this data: docs/models.md,
    # IMP). `--config.loss.edge=baseline` gives Xu et al.'s loss.
    c.loss.edge = "dnorm"
    # Object logits = a RoI-feature classifier (trained with the backbone in the objects stage,
    # as a detector's box classifier) + a zero-initialised node-state classifier (trained with
    # the message passing), instead of Xu et al.'s node-state classifier alone, which trains
    # only in the relations stage on a backbone pre-trained through a frozen random GRU
    # (measured: docs/models.md, IMP). `--config.model.obj_roi_residual=False` gives Xu et
    # al.'s classifier.
    c.model.obj_roi_residual = True
    return apply_preset(c, arg)
