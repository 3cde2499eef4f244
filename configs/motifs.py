"""Neural Motifs (Zellers et al. 2018, MotifNet) on the built-in synthetic data.

Presets (`--config configs/motifs.py:<preset>`):
  (default)  synthetic data, small ResNet (stride 8), minutes on a laptop CPU.
  tiny       a seconds-long smoke run (tests).
  vg         neural-motifs' published MotifNet (scripts/train_models_sgcls.sh) on a local
             Visual Genome VG150 copy (--config.data.data_dir=...), from pretrained weights as
             the other vg presets (docs/models.md, "Presets"): leftright order, 2 object and 4
             edge context layers 512 wide, 200-d class and 128-d position embeddings, the
             frequency bias; SGD (momentum 0.9, weight decay 1e-4) at 6e-3 (its lr 1e-3 x batch
             6), the RoI fc layers at a tenth of it, gradient norm clipped at 5, 256 pairs per
             image (a quarter foreground), lowered 10x when val R@100 plateaus (and stopped
             there, as neural-motifs' code does); a relation stage in SGCls that also serves
             PredCls, then SGDet refinement on the detector's boxes.
             What differs from the reference is listed in docs/models.md ("Presets").
"""
from sgg_jax.config import apply_preset, epochs_to_steps, get_base_config, stage


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
    preset = (arg or "default").strip()
    c = apply_preset(c, arg)
    if preset == "vg":
        c.model.hidden_dim = 512
        c.model.embed_dim = 200
        c.model.pos_dim = 128
        c.model.obj_layers = 2  # -nl_obj 2
        c.model.edge_layers = 4  # -nl_edge 4
        c.input.batch_size = 6  # -b 6 on one GPU
        c.train.weight_decay = 1e-4  # -l2 default
        c.train.grad_clip_norm = 5.0  # -clip 5
        # neural-motifs trains the relation model on a frozen VG detector: the trunk stays
        # frozen (the `objects` stage stands for that detector's training), its copied fc
        # layers (roi_features) learn at lr / 10. At most 25 epochs (its -nepoch default);
        # its ReduceLROnPlateau: val R@100 (in the stage's mode, once per epoch) not up by
        # 1e-4 for 3 epochs -> rate x 0.1 (cooldown 1), and training stops once any group's
        # rate is at most lr / 99, which the fc group's lr / 10 reaches at the first drop.
        c.train.plateau.every = epochs_to_steps(1, c.input.batch_size)
        c.train.plateau.update(dict(split="val", metric="R@100", patience=3, factor=0.1,
                                    threshold=1e-4, cooldown=1, stop_below=1 / 99))
        with c.unlocked():
            c.train.stages.relations = stage(
                num_steps=epochs_to_steps(25, c.input.batch_size),
                trainable=("obj_classifier", "relation_head", "roi_features"),
                losses=("object", "relation"), learning_rate=6e-3, optimizer="sgd",
                schedule="plateau", mode="sgcls",
                optimizers=dict(
                    heads=dict(trainable=("obj_classifier", "relation_head")),
                    fc=dict(trainable=("roi_features",), learning_rate=6e-4)))
            # SGDet refinement (scripts/refine_for_detection.sh): from the SGCls checkpoint,
            # on the detector's boxes, -lr 1e-4 x batch 6, at most 10 epochs, the same plateau
            # rule on val SGDet R@100. PredCls / SGCls are evaluated with the `relations`
            # stage's parameters, SGDet with these.
            c.train.stages.sgdet = stage(
                num_steps=epochs_to_steps(10, c.input.batch_size),
                trainable=("obj_classifier", "relation_head", "roi_features"),
                losses=("object", "relation"), learning_rate=6e-4, optimizer="sgd",
                schedule="plateau", mode="sgdet",
                optimizers=dict(
                    heads=dict(trainable=("obj_classifier", "relation_head")),
                    fc=dict(trainable=("roi_features",), learning_rate=6e-5)))
            c.train.stage_order = "detector,objects,relations,sgdet"
    return c
