"""MSDN (Li et al. 2017: objects, phrases and region captions) on the built-in synthetic data.

Presets (`--config configs/msdn.py:<preset>`):
  (default)  synthetic data, small ResNet, about 10 minutes on a 2-core CPU: PredCls / SGCls
             recalls and region-caption BLEU-4 ("given regions": ground-truth region boxes).
  tiny       a seconds-long smoke run (tests).
  vg         the published sizes on a local VG150 copy (regions need the VG-MSDN json files).

Stages: `objects` trains the backbone, the three RoI branches, the message passing (whose
refined object states the object classifier reads) and the captioner on the object and caption
losses; `relations` freezes the backbone and adds the predicate loss. SGDet (object and region
proposals) is not wired for MSDN yet, so eval.modes is PredCls and SGCls.
"""
from sgg_jax.config import apply_preset, get_base_config, stage

_ALL_BUT_BACKBONE = ("roi_features", "obj_classifier", "relation_head", "captioner")


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "msdn"
    c.model.hidden_dim = 128
    c.model.num_iterations = 2  # MSDN's test-time rounds (cfg.TEST.MPS_ITER_NUM)
    c.model.gate_width = 128  # width of the message gates' hidden layer (MSDN: 128)
    c.train.stage_order = "objects,relations"
    c.train.stages.objects = stage(
        num_steps=300, trainable=("backbone",) + _ALL_BUT_BACKBONE, losses=("object", "caption"),
        learning_rate=2e-3, warmup_steps=50)
    c.train.stages.relations = stage(
        num_steps=400, trainable=_ALL_BUT_BACKBONE, losses=("object", "relation", "caption"),
        learning_rate=1e-3, warmup_steps=50)
    c.eval.modes = "predcls,sgcls"
    c = apply_preset(c, arg)
    if (arg or "default").strip() == "tiny":
        c.model.gate_width = 16
    return c
