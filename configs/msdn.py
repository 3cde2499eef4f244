"""MSDN (Li et al. 2017: objects, phrases and region captions) on the built-in synthetic data.

Presets (`--config configs/msdn.py:<preset>`):
  (default)  the demo: synthetic data (generated if absent), small ResNet; trains the four
             stages, MSDN's box heads included, and reports PredCls / SGCls / SGDet recalls,
             phrase detection, the box mAP of the detector's and of the refined SGDet boxes and
             region-caption BLEU-4 ("given regions": ground-truth region boxes), with a few
             prediction pictures (time and figures: README and docs/models.md).
  tiny       a seconds-long smoke run (tests; box heads in the relations stage only).
  vg         the published setup: MSDN's sizes on a local VG-MSDN copy (data.name="vg_msdn",
             MSDN's own 150-object / 50-predicate split; objects, relations and caption regions
             from its train.json / test.json, names from categories.json). Point
             --config.data.data_dir at the VG-MSDN directory; images are read from
             <data_dir>/images/<entry path> (F-Net's layout) unless --config.data.image_dir says
             otherwise (relative to data_dir, or absolute). Trains on all of train.json
             as MSDN does (data.num_val_im=0; N > 0 holds out its first N images as val).

Stages (MSDN's "RPNs, then the full model"; each checkpointed, a re-run resumes where it
stopped): `detector` trains the Faster R-CNN whose detections are SGDet's objects (docs/
detector.md); `regions` trains the region RPN (sgg_jax/models/region_proposals.py, params group
`region_rpn`) on the caption-region boxes over the frozen detector's features; `objects` trains
the backbone, the three RoI branches, the message passing (whose refined object states the
object classifier reads) and the captioner on the object and caption losses; `relations`
freezes the backbone and adds the predicate loss. `detector` and `regions` run only when
eval.modes has sgdet. In SGDet the detections are MSDN's object boxes and the region proposals
its caption regions, in one jitted step.
"""
import ml_collections

from sgg_jax.config import apply_preset, get_base_config, stage

_ALL_BUT_BACKBONE = ("roi_features", "obj_classifier", "relation_head", "captioner")
# MSDN's region objectness + box and object box-refinement losses on sampled region / object
# RoIs (they need the detector and region RPN, so runs without sgdet drop them with a warning).
# Trained in both relation stages: in the relations stage alone (a frozen trunk) they lowered
# PredCls R@50 50.91 -> 44.55; their cost per step: docs/models.md, MSDN.
_BOX_HEADS = ("region", "object_box")


def get_config(arg: str | None = None):
    c = get_base_config()
    c.model.name = "msdn"
    c.model.hidden_dim = 128
    c.model.num_iterations = 2  # MSDN's test-time rounds (cfg.TEST.MPS_ITER_NUM)
    c.model.gate_width = 128  # width of the message gates' hidden layer (MSDN: 128)
    # Test-time captions: 1 greedy, k > 1 beam search of width k. On the demo's checkpoint,
    # given-regions BLEU-4: greedy 3.62, beam 3 4.23, beam 5 4.50 (docs/models.md).
    c.model.caption_beam_size = 3
    # MSDN's region RPN (sgg_jax/models/region_proposals.py) on the detector's stride-16
    # features, sized for the caption regions (union boxes of related pairs on 128 px canvases).
    c.model.region_rpn = ml_collections.ConfigDict(dict(
        anchor_sizes=(24.0, 48.0, 96.0), aspect_ratios=(0.5, 1.0, 2.0), channels=64,
        pre_nms_top_n=300, num_proposals=16, nms=0.7, batch_size_per_image=128,
        # With the box-head losses MSDN's region branch trains on sampled region-RPN proposals:
        # 48 proposals + the caption regions -> 16 RoIs, at most half fg (IoU >= 0.5).
        train_proposals=48, train_rois=16, train_fg_fraction=0.5, train_fg_iou=0.5))
    # Object box refinement (loss `object_box`): per image, this many of the detector's RPN
    # proposals with IoU >= 0.5 to a ground-truth object train the class-specific box head.
    c.model.box_refinement_rois = 16
    c.train.stage_order = "detector,regions,objects,relations"
    c.train.stages.regions = stage(
        num_steps=200, trainable=("region_rpn",), losses=("region_proposal",),
        learning_rate=3e-3, warmup_steps=20, kind="regions")
    c.train.stages.objects = stage(
        num_steps=300, trainable=("backbone",) + _ALL_BUT_BACKBONE,
        losses=("object", "caption") + _BOX_HEADS, learning_rate=2e-3, warmup_steps=50)
    c.train.stages.relations = stage(
        num_steps=400, trainable=_ALL_BUT_BACKBONE,
        losses=("object", "relation", "caption") + _BOX_HEADS, learning_rate=1e-3,
        warmup_steps=50)
    c.eval.sgdet_refine_boxes = True  # SGDet boxes and regions go through the box heads
    c.eval.modes = "predcls,sgcls,sgdet"
    preset = (arg or "default").strip()
    c = apply_preset(c, arg)
    if preset == "tiny":
        # Box heads in the relations stage only, so tests cover them cheaply.
        c.train.stages.objects.losses = "object,caption"
        c.model.caption_beam_size = 2
        c.model.gate_width = 16
        c.model.region_rpn.anchor_sizes = (32.0, 64.0)
        c.model.region_rpn.channels = 16
        c.model.region_rpn.pre_nms_top_n = 96
        c.model.region_rpn.num_proposals = 8
        c.model.region_rpn.batch_size_per_image = 64
        c.model.region_rpn.train_proposals = 16
        c.model.region_rpn.train_rois = 8
        c.model.box_refinement_rois = 8
    elif (arg or "").strip() == "vg":
        # MSDN trains and tests on its own VG-MSDN split, not VG150: data_dir is a VG-MSDN
        # directory (train.json, test.json, categories.json, images/; see the docstring).
        c.data.name = "vg_msdn"
        # MSDN trains on all of train.json (it has no validation split; evaluation reads the
        # test split). --config.data.num_val_im=N holds out train.json's first N images as val.
        c.data.num_val_im = 0
        # VGG16 trunk at 592 px: MSDN's region anchors span small phrases to whole scenes.
        c.model.region_rpn.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
        c.model.region_rpn.channels = 512
        c.model.region_rpn.pre_nms_top_n = 6000
        c.model.region_rpn.num_proposals = 128
        c.model.region_rpn.batch_size_per_image = 256
        c.train.stages.regions.num_steps = 50_000
        c.train.stages.regions.learning_rate = 1e-2
        c.train.stages.regions.optimizer = "sgd"
        c.train.stages.regions.warmup_steps = 1000
    return c
