"""KERN (Chen et al. 2019, knowledge-embedded routing) on the built-in synthetic data.

Presets (`--config configs/kern.py:<preset>`):
  (default)  synthetic data, small ResNet (stride 8), minutes on a laptop CPU.
  tiny       a seconds-long smoke run (tests).
  vg         KERN's published setup (yuweihao/KERN scripts and README) on a local Visual Genome
             VG150 copy (--config.data.data_dir=...), from pretrained weights as the other vg
             presets (docs/models.md, "Presets"): GGNNs 512 wide with 3 steps each; Adam (eps
             1e-3, no weight decay) at 2e-5 (its lr 1e-5 x batch 2), the RoI fc layers at a
             tenth of it, gradient norm clipped at 5, constant rate; KERN's phases as stages:
             `predcls` (the relation GGNN alone, 25 epochs: KERN's 20-30), `sgcls` (adds the
             object GGNN, 10 epochs: KERN's 8-13), whose checkpoint serves PredCls and SGCls,
             then `sgdet` (the same on the detector's boxes, 10 epochs), which serves SGDet.
"""
from sgg_jax.config import apply_preset, epochs_to_steps, get_base_config, stage


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "kern"
    c.model.hidden_dim = 64
    c.model.obj_steps = 3
    c.model.rel_steps = 3
    preset = (arg or "default").strip()
    c = apply_preset(c, arg)
    if preset == "vg":
        c.model.hidden_dim = 512
        c.model.obj_steps = c.model.rel_steps = 3
        c.input.batch_size = 2
        c.train.adam_eps = 1e-3
        c.train.weight_decay = 0.0
        c.train.grad_clip_norm = 5.0
        batch = c.input.batch_size

        def phase(epochs, heads, losses, mode):
            # The trunk stays frozen (the `objects` stage stands for KERN's VG detector, as
            # neural-motifs'); its fc layers learn at a tenth of the heads' rate.
            return stage(
                num_steps=epochs_to_steps(epochs, batch), trainable=heads + ("roi_features",),
                losses=losses, learning_rate=2e-5, optimizer="adam", schedule="constant",
                mode=mode, optimizers=dict(heads=dict(trainable=heads),
                                           fc=dict(trainable=("roi_features",),
                                                   learning_rate=2e-6)))

        with c.unlocked():
            del c.train.stages["relations"]
            # Phase 1: GGNNRel on ground-truth labels (relation_head/relations).
            c.train.stages.predcls = phase(25, ("relation_head/relations",), ("relation",),
                                           "predcls")
            # Phase 2: adds GGNNObj (relation_head/objects) and the object loss.
            c.train.stages.sgcls = phase(10, ("obj_classifier", "relation_head"),
                                         ("object", "relation"), "sgcls")
            # Phase 3: SGDet refinement on the detector's boxes (scripts/train_kern_sgdet.sh:
            # phase 2's flags from its checkpoint; it names no epoch count and picks the best
            # val epoch, so 10 as phase 2). PredCls / SGCls are evaluated with `sgcls`.
            c.train.stages.sgdet = phase(10, ("obj_classifier", "relation_head"),
                                         ("object", "relation"), "sgdet")
            c.train.stage_order = "detector,objects,predcls,sgcls,sgdet"
    return c
