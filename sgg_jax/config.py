"""Shared base configuration: every model config starts from `get_base_config()`.

Fields are grouped as `data` (what to read), `input` (how batches are made), `model`,
`loss`, `train` (mesh, stages, optimizer), `eval` and `logging`. The config is locked, so a
misspelt `--config.key=value` override is rejected with the list of valid keys.
"""
from __future__ import annotations

import ml_collections


# config.train.plateau (see get_base_config).
PLATEAU_DEFAULTS = dict(every=0, split="val", metric="R@100", patience=3, factor=0.1,
                        threshold=1e-4, cooldown=1, stop_below=0.0)


def stage(*, num_steps: int, trainable: tuple[str, ...], losses: tuple[str, ...],
          learning_rate: float, warmup_steps: int = 0, optimizer: str = "adam",
          schedule: str = "cosine", kind: str = "relation", mode: str = "",
          restore_from: str = "", restore_into: str = "", restore_groups: tuple[str, ...] = (),
          optimizers: dict | None = None, update_rule: str = "joint") -> ml_collections.ConfigDict:
    """One training stage: which parameter groups train, on which losses, and how long.

    kind: "relation" (the relation model), "detector", or a model's auxiliary network's kind
      (MSDN: "regions"). mode: a relation stage's training mode ("" = the run's: sgcls when
      eval.modes has it, else predcls).
    restore_from: before a fresh stage starts, load groups from another run (its last finished
      stage) or a stage directory, into group `restore_into` ("" = top level); restore_groups:
      which ("" = all both have). A stage with `num_steps` 0 and `restore_from` only loads
      (SGP takes its base run's region RPN so).
    optimizers: several optimizers, {name: dict(trainable=..., losses=..., learning_rate=...,
      ...)} (fields left out are the stage's), applied jointly or alternating (`update`);
      sgg_jax/training/optim.py.
    """
    return ml_collections.ConfigDict(dict(
        num_steps=num_steps, trainable=",".join(trainable), losses=",".join(losses),
        learning_rate=learning_rate, warmup_steps=warmup_steps, optimizer=optimizer,
        schedule=schedule, kind=kind, mode=mode, restore_from=restore_from,
        restore_into=restore_into, restore_groups=",".join(restore_groups),
        optimizers=ml_collections.ConfigDict({
            k: ml_collections.ConfigDict({f: (",".join(v) if isinstance(v, tuple) else v)
                                          for f, v in o.items()})
            for k, o in (optimizers or {}).items()}),
        update_rule=update_rule))


# Visual Genome VG150's training images with relations, less the 5000 held out as val
# (neural-motifs' split: 57,723), to turn the published setups' epochs into steps.
VG150_TRAIN_IMAGES = 57_723


def epochs_to_steps(epochs: float, batch_size: int, images: int = VG150_TRAIN_IMAGES) -> int:
    """Optimizer steps of `epochs` passes over `images` at a global `batch_size`."""
    return int(round(epochs * -(-images // batch_size)))


def get_base_config() -> ml_collections.ConfigDict:
    """Defaults sized for the built-in synthetic data on a laptop CPU."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mode = "train"  # train | eval | predict

    c.data = ml_collections.ConfigDict(dict(
        name="synthetic",  # synthetic | vg150 | vg_msdn
        data_dir="",  # local VG150 (name=vg150) or VG-MSDN (name=vg_msdn) directory
        image_dir="",  # images, relative to data_dir or absolute ("" = VG_100K/ or images/)
        cache_dir="",  # where the synthetic data and TFDS files live ("" = ~/.cache/sgg_jax)
        tfds_dir="",
        num_train=1500, num_val=100, num_test=300,
        image_size=256, preset="default",
        num_val_im=100, seed=0,
        filter_empty_rels=True, filter_duplicate_rels=True, filter_non_overlap=False,
    ))
    c.input = ml_collections.ConfigDict(dict(
        # 128 px canvases keep the CPU demo to minutes (the synthetic images are 256 px).
        image_size=128, max_objects=12, max_relations=32, max_regions=8, max_phrase_len=12,
        # The detector's canvas: 0 = input.image_size, or a reused detector's own size
        # (model.detector.checkpoint): it sees the images at the size it was trained at and
        # its boxes are scaled to the model's canvas (docs/detector.md).
        detector_image_size=0,
        batch_size=8,  # global batch; divided over processes
        eval_batch_size=16,
        worker_count=0, flip_prob=0.5,
    ))
    c.model = ml_collections.ConfigDict(dict(
        # A module that registers a model of one's own (dotted path or .py file; "" = the
        # built-in models), imported before config.model.name is looked up.
        module="",
        # Stride 8: at 128 px the smallest synthetic objects (~5 px) are under one stride-16
        # cell (the measured gain: docs/models.md, Backbones). The tiny preset keeps stride 16
        # (test speed).
        name="imp", backbone="small_resnet_s8", hidden_dim=128, num_iterations=3,
        roi_size=7, sampling_ratio=2, fc_dim=256, dtype="float32", dropout=0.0,
        # Add Motifs' frequency bias log p(pred | subj class, obj class) to the relation logits
        # (Scene-Graph-Benchmark's PREDICT_USE_BIAS, on by default there for IMP and Motifs).
        freq_bias=False,
        # Pretrained weights (sgg_jax/training/pretrained.py, read when parameters are
        # initialised; nothing is downloaded): a local torchvision ImageNet state dict for the
        # relation model's backbone (vgg16 / resnet50; .npz, .safetensors, or .pth through
        # torch.load(weights_only=True)). The detector has its own fields (model.detector).
        backbone_weights="",
        # Set by the `vg` preset: refuse to start unless every backbone the run trains has
        # pretrained weights, or from_scratch=True acknowledges random initialisation.
        require_pretrained=False,
        from_scratch=False,
    ))
    # The Faster R-CNN of SGDet (sgg_jax/models/detection, docs/detector.md), trained by the
    # `detector` stage; mapped onto DetectorConfig by sgg_jax.models.detector_config.
    c.model.detector = ml_collections.ConfigDict(dict(
        backbone="small_resnet",  # small_resnet | vgg16 | resnet50 | resnet50_fpn
        # small_resnet channels (4 ints; () = the backbone's default 32,64,128,256): a quarter
        # of the FLOPs of the relation model's trunk keeps the CPU demo's detector stage ~2 min.
        backbone_widths=(16, 32, 64, 128),
        # small_resnet: 16, or 8 (finer features for small objects: the default preset's).
        # Other backbones have their own stride (16) and take neither this nor the widths.
        backbone_stride=16,
        # One size per anchor (sqrt of its area, canvas pixels) on the single feature map; for
        # resnet50_fpn one size per level P2..P6. Sized for the synthetic objects on 128 px
        # canvases (median sqrt(area) ~14 px, 5-95%: 5-34 px).
        anchor_sizes=(12.0, 24.0, 48.0, 96.0), aspect_ratios=(0.5, 1.0, 2.0),
        rpn_channels=64, rpn_pre_nms_top_n_train=600, rpn_pre_nms_top_n_test=600,
        rpn_post_nms_top_n_train=150, rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=256, roi_batch_size_per_image=64, fc_dim=128,
        score_thresh=0.05, nms=0.5, box_nms_candidates=400,
        # D: detections per image, the relation model's boxes in SGDet (all D*(D-1) ordered
        # pairs are scored). 20 covers the synthetic images (<= 18 objects, median 7); the
        # vg preset uses 64 as neural-motifs (SGB: 80).
        detections_per_image=20,
        dropout=0.0,
        # Pretrained weights (local files, sgg_jax/training/pretrained.py): `weights` = a whole
        # detector from another codebase, by backbone: vgg16 -> neural-motifs' VG detector
        # checkpoint, resnet50_fpn -> torchvision's fasterrcnn_resnet50_fpn state dict;
        # `backbone_weights` = a torchvision ImageNet VGG16 / ResNet-50 state dict for the
        # backbone alone (vgg16 / resnet50 / resnet50_fpn). Set at most one.
        weights="", backbone_weights="",
        # A trained detector to reuse: a finished run (configs/detector.py, or any run with a
        # detector) or one stage's checkpoint directory. Its parameters fill this run's
        # "detector" group and the run trains no detector of its own; another architecture,
        # class list or image size is refused before anything compiles (docs/detector.md).
        checkpoint="",
    ))
    c.loss = ml_collections.ConfigDict(dict(
        edge="baseline",  # baseline | dnorm | dnorm-fgbg
        obj_weight=1.0, rel_weight=1.0,
        # Weights of loss terms a model returns itself (ModelOutputs.losses), by name; a model
        # config adds its terms here (1 when absent).
        weights=ml_collections.ConfigDict(),
    ))
    c.sampling = ml_collections.ConfigDict(dict(num_rels=64, fg_fraction=0.25, must_overlap=False))
    c.train = ml_collections.ConfigDict(dict(
        data_parallel=-1,  # devices on the mesh's data axis; -1 = all devices
        grad_clip_norm=5.0, weight_decay=0.0,
        # Adam's epsilon (optax's default 1e-8; KERN trains with 1e-3).
        adam_eps=1e-8,
        # Persistent XLA compilation cache ("" = $JAX_COMPILATION_CACHE_DIR or
        # ~/.cache/sgg_jax/xla; "off" = none): re-runs and resumed runs skip recompilation.
        compilation_cache_dir="",
        checkpoint_every=100, keep_checkpoints=2, log_every=20, eval_every=0,
        # Stages with schedule="plateau" (neural-motifs' ReduceLROnPlateau): every `every` steps
        # the model is evaluated on `split` in the stage's mode; when `metric` (the motifs
        # protocol's, e.g. R@100) has not risen above its best + `threshold` for more than
        # `patience` evaluations the rate is multiplied by `factor`, and the next `cooldown`
        # evaluations do not count; the stage ends early once an optimizer's rate is at most
        # `stop_below` x the stage's learning_rate (0 = never).
        plateau=ml_collections.ConfigDict(PLATEAU_DEFAULTS),
        # A checkpoint that cannot be restored (damaged, or written by another model / config)
        # stops the run naming it; True moves it aside (<step>.damaged-<time>, nothing is
        # deleted) and resumes from the newest earlier step that restores.
        restore_fallback=False,
        # Stages run in this order; each has its own checkpoint directory and restores the
        # parameters the previous one trained. Trainable groups and losses are comma lists.
        # The `detector` stage runs only when eval.modes contains sgdet (its parameters are the
        # top-level group "detector"; later stages keep it frozen).
        stage_order="detector,objects,relations",
        stages=ml_collections.ConfigDict(dict(
            detector=stage(num_steps=300, trainable=("detector",), losses=("detection",),
                           learning_rate=2e-3, warmup_steps=50, kind="detector"),
            objects=stage(num_steps=300, trainable=("backbone", "roi_features", "obj_classifier"),
                  losses=("object",), learning_rate=2e-3, warmup_steps=50),
            relations=stage(num_steps=400, trainable=("roi_features", "obj_classifier", "relation_head"),
                  losses=("object", "relation"), learning_rate=1e-3, warmup_steps=50),
        )),
    ))
    c.eval = ml_collections.ConfigDict(dict(
        modes="predcls,sgcls,sgdet", split="test", ks=(20, 50, 100), max_images=-1,
        # SGDet: keep only pairs of intersecting detections (neural-motifs' must_overlap);
        # object labels/scores from the "detector" (default; FREQ always) or the relation
        # "model"'s object classifier on the detected boxes.
        sgdet_must_overlap=False, sgdet_object_source="detector",
        # SGDet: move the detections (and MSDN's region proposals) by the relation model's own
        # box-refinement heads (MSDN's; models without them reject True).
        sgdet_refine_boxes=False,
        # Recall protocols reported (comma list): "motifs" (neural-motifs / SGB, results[mode])
        # and "msdn" (MSDN / F-Net micro-averaged, results["msdn"][mode]); phrase detection
        # (phrdet) is scored from the SGDet pass whenever sgdet is evaluated.
        protocols="motifs,msdn",
        # Prediction pictures of the first N images of the split (0 = none), drawn for the most
        # complete mode evaluated into <workdir>/pictures/ at the end of training and in eval.
        num_pictures=4,
        checkpoint="",  # for --config.mode=eval: a workdir or a checkpoint directory
        # Evaluate / predict with an unfinished run (its newest checkpoint); results.json then
        # says "partial": {stage, step, num_steps}. Without it an unfinished run is an error.
        allow_partial=False,
        # Also write each mode's predictions to <workdir>/predictions/<split>_<mode>.h5
        # (`python -m sgg_jax.evaluate` reads them).
        save_predictions=False,
        # With save_predictions: also the relation model's raw object and predicate logits (and
        # each image's size) in PredCls / SGCls files, e.g. to train SGP on them
        # (`python -m sgg_jax.sgp_offline`); SGDet files never have them.
        save_logits=False,
    ))
    # Captioning models (MSDN): the top_regions best caption regions shown per image, after
    # greedy NMS at IoU region_nms (1 = none) so that they are not copies of one box.
    c.predict = ml_collections.ConfigDict(dict(images="", output="", top_relations=20,
                                               top_regions=5, region_nms=0.5))
    # Process settings applied by the entry point (sgg_jax/runtime.py): keep freed host memory
    # for reuse instead of page-faulting XLA's per-call buffers afresh at every step (glibc;
    # the process then holds its peak memory until it exits).
    c.runtime = ml_collections.ConfigDict(dict(tune_host_allocator=True))
    # Multi-host runs (docs/distributed.md): initialize=True lets JAX find the job itself
    # (Cloud TPU, SLURM, Kubernetes); otherwise coordinator_address, num_processes and
    # process_id name it. A process that sends no heartbeat for heartbeat_timeout_s seconds
    # (killed, host lost) counts as dead and the others stop with an error instead of waiting
    # forever in a collective.
    c.distributed = ml_collections.ConfigDict(dict(
        coordinator_address="", num_processes=0, process_id=-1, initialize=False,
        heartbeat_timeout_s=100))
    return c


def apply_preset(c: ml_collections.ConfigDict, preset: str | None) -> ml_collections.ConfigDict:
    """Applies a named preset shared by the model configs, then locks the config."""
    preset = (preset or "default").strip()
    if preset == "default":
        # The small synthetic objects need stride 8: after the demo's 300 detector steps at
        # 128 px box AP 16.9 against 5.8 at 16, for 1.2x the detector's step time
        # (docs/detector.md, "The relation presets' own detector").
        c.model.detector.backbone_stride = 8
    elif preset == "tiny":
        # Seconds-long end-to-end run for tests and smoke checks.
        c.data.num_train, c.data.num_val, c.data.num_test = 48, 8, 16
        c.data.num_val_im = 8
        c.data.image_size = 128
        c.input.image_size = 128
        c.input.batch_size = 4
        c.input.eval_batch_size = 4
        c.input.max_objects = 8
        c.input.max_relations = 16
        c.model.backbone = "small_resnet"
        c.model.hidden_dim = 32
        c.model.fc_dim = 32
        c.model.num_iterations = 2
        c.model.detector.backbone_widths = (8, 16, 16, 32)
        c.model.detector.anchor_sizes = (16.0, 32.0)
        c.model.detector.rpn_channels = 16
        c.model.detector.rpn_pre_nms_top_n_train = c.model.detector.rpn_pre_nms_top_n_test = 96
        c.model.detector.rpn_post_nms_top_n_train = c.model.detector.rpn_post_nms_top_n_test = 48
        c.model.detector.rpn_batch_size_per_image = 64
        c.model.detector.roi_batch_size_per_image = 32
        c.model.detector.fc_dim = 32
        c.model.detector.box_nms_candidates = 96
        c.model.detector.detections_per_image = 10
        c.eval.modes = "predcls,sgcls"  # tests opt in to sgdet (which adds the detector stage)
        c.sampling.num_rels = 16
        c.train.checkpoint_every = 4
        c.train.log_every = 2
        for name in c.train.stages:
            c.train.stages[name].num_steps = 6
            c.train.stages[name].warmup_steps = 0
    elif preset == "vg":
        # The published setup (Xu et al. / neural-motifs) on a local VG150 copy. It starts from
        # pretrained networks: model.backbone_weights and model.detector.weights (or
        # .backbone_weights) must name local files, or model.from_scratch=True say otherwise.
        c.model.require_pretrained = True
        c.data.name = "vg150"
        c.data.num_val_im = 5000
        c.data.filter_non_overlap = False
        c.input.image_size = 592
        c.input.max_objects = 64
        c.input.max_relations = 128
        c.input.batch_size = 8
        c.input.eval_batch_size = 8
        c.input.worker_count = 8
        c.model.backbone = "vgg16"
        c.model.hidden_dim = 512
        c.model.fc_dim = 4096
        c.model.dropout = 0.5
        c.model.detector.backbone = "vgg16"
        c.model.detector.backbone_widths = ()
        c.model.detector.detections_per_image = 64
        # neural-motifs' 20 anchors per location (its config.py: ANCHOR_SIZE 16 x
        # ANCHOR_SCALES, ANCHOR_RATIOS as h / w, ratio-major as ours), so that its VG detector
        # checkpoint's RPN imports (model.detector.weights).
        c.model.detector.anchor_sizes = tuple(
            16.0 * s for s in (2.22152954, 4.12315647, 7.21692515, 12.60263013, 22.7102731))
        c.model.detector.aspect_ratios = (0.23232838, 0.63365731, 1.28478321, 3.15089189)
        c.model.detector.rpn_channels = 512
        c.model.detector.fc_dim = 4096
        c.model.detector.rpn_pre_nms_top_n_train = 12000
        c.model.detector.rpn_pre_nms_top_n_test = 6000
        c.model.detector.rpn_post_nms_top_n_train = 2000
        c.model.detector.rpn_post_nms_top_n_test = 1000
        c.model.detector.roi_batch_size_per_image = 256
        c.model.detector.box_nms_candidates = 1000
        c.model.detector.dropout = 0.5
        c.train.stages.detector.num_steps = 100_000
        c.train.stages.detector.learning_rate = 1e-2
        c.train.stages.detector.optimizer = "sgd"
        c.train.stages.detector.warmup_steps = 1000
        c.sampling.num_rels = 256
        c.train.checkpoint_every = 2000
        c.train.log_every = 100
        c.train.eval_every = 20000
        c.train.stages.objects.num_steps = 100_000
        c.train.stages.objects.learning_rate = 1e-3
        c.train.stages.objects.optimizer = "sgd"
        c.train.stages.objects.warmup_steps = 1000
        if "relations" in c.train.stages:
            c.train.stages.relations.num_steps = 50_000
            c.train.stages.relations.learning_rate = 1e-3
            c.train.stages.relations.optimizer = "sgd"
            c.train.stages.relations.warmup_steps = 500
    else:
        raise ValueError(f"unknown preset {preset!r}: expected one of default, tiny, vg")
    c.lock()
    return c
