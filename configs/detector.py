"""The detector alone (Faster R-CNN, sgg_jax/models/detection): trains it and reports its COCO
box AP / AP50 / AP75 and per-class AP on the test split (`eval.modes="detection"`), with
pictures of its detections. A finished run gives relation runs their detector
(`--config.model.detector.checkpoint=<this run>`), so that heads are compared on one set of
boxes (docs/detector.md).

Presets (`--config configs/detector.py:<preset>`):
  (default)  synthetic data at its own 256 px, the small ResNet detector, minutes on a CPU.
  tiny       a seconds-long smoke run (tests).
  bench      the shared detector of the model comparisons: box AP >= 65 on the synthetic test
             split within 45 minutes on a 2-core CPU, data and compilation included
             (docs/detector.md, "The shared detector").
  vg         the published VGG16 detector on a local VG150 copy (neural-motifs' setup), from an
             ImageNet VGG16 (--config.model.detector.backbone_weights=...).
"""
from sgg_jax.config import apply_preset, get_base_config


def get_config(arg: str | None = None):
    preset = (arg or "default").strip()
    c = get_base_config()
    c.model.name = "detector"
    c.train.stage_order = "detector"
    # The synthetic images are 256 px: the detector sees them whole (the relation presets'
    # 128 px canvases halve the small objects, ~5 px there).
    c.input.image_size = 256
    c.input.eval_batch_size = 8
    # Stride 8 and anchors from 12 px: the small classes (apple, book, cup, bottle, ~5-15 px)
    # limit AP; at stride 16 with 24-192 px anchors 3000 steps reached AP 55.1, at stride 8
    # with 12-192 px 66.3 (docs/detector.md, "The shared detector").
    c.model.detector.backbone_stride = 8
    c.model.detector.anchor_sizes = (12.0, 24.0, 48.0, 96.0, 192.0)
    c.model.detector.rpn_pre_nms_top_n_train = c.model.detector.rpn_pre_nms_top_n_test = 1000
    c.model.detector.rpn_post_nms_top_n_train = 300
    c.model.detector.rpn_post_nms_top_n_test = 200
    det = c.train.stages.detector
    det.num_steps, det.learning_rate, det.warmup_steps = 1500, 2e-3, 100
    c.train.checkpoint_every, c.train.log_every = 500, 50
    if preset == "bench":
        det.num_steps = 6000
        c.train.eval_every = 1500  # AP against steps (<workdir>/eval_history.jsonl)
    c = apply_preset(c, "default" if preset == "bench" else arg)
    c.eval.modes = "detection"  # the tiny preset's modes are relation modes
    return c
