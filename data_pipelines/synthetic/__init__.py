"""Built-in synthetic scene-graph dataset, written in Visual Genome's file layouts.

    python -m data_pipelines.synthetic --output DIR [--num-train N] [--num-val N] [--num-test N]
        [--image-size S | WxH] [--seed S] [--preset default|large] [--workers K] [--overwrite]

Each image is a procedurally rendered scene (kitchen, office, street, park) whose objects are
placed by simple world rules (things rest on supports, sit inside containers, are held or worn;
animals and people face a direction), drawn back to front with Pillow. The ground-truth graph is
computed from that world: every predicate has a precise definition (see `relation_truth`), and an
"annotator" writes down a sparse, class-dependent subset of the true relations, which gives VG's
long tail and missing labels. A fixed list of (subject, predicate, object) triplets is kept out of
train/val and planted in test (zero-shot). Output: VG150 (`VG-SGG.h5`, `VG-SGG-dicts.json`,
`image_data.json`, `VG_100K/<id>.jpg`), VG-MSDN json (`msdn/`), `zero_shot_triplets.json`,
`README.md`. See docs/synthetic_dataset.md.

Box exactness: image long sides divide 1024 and every box coordinate is a multiple of
`grid_step(long_side)` (2 up to 512 px, 4 at 1024 px), so the VG150 1024- and 512-scale boxes are
integers with even widths/heights: xc = x1 + w / 2 is exact and the reference loaders' decoding
returns the generated boxes exactly.

Modules, in dependency order:
    spec       vocabulary and world rules as plain tables (classes, predicates, scene types)
    render     Pillow drawing of backgrounds and class shapes (`render`, `eye_point`)
    world      the world model: objects placed on a coordinate grid (`World`, `grid_step`)
    annotate   true relations, the sparse annotation, region captions
    scene      one scene: sample, annotate, render (`sample_scene`, `make_scene`)
    generator  the dataset: jobs, VG150 / VG-MSDN / zero-shot / README files, `generate`, `main`
The names below are re-exported here. `render` and `annotate` are not: those names are the
modules (use `data_pipelines.synthetic.render.render`, `...annotate.annotate`).
"""
from data_pipelines.synthetic.annotate import (NUM_PREDICATES, expected_annotation_counts,
                                               region_phrases, relation_truth)
from data_pipelines.synthetic.generator import (GENERATOR_VERSION, PRESETS, GenerationResult,
                                                generate, image_rng, main, planted_triplet,
                                                zero_shot_ids)
from data_pipelines.synthetic.scene import SceneGraph, make_scene, sample_scene
from data_pipelines.synthetic.world import check_image_size, grid_step

__all__ = [
    "GENERATOR_VERSION", "NUM_PREDICATES", "PRESETS", "GenerationResult", "SceneGraph",
    "check_image_size", "expected_annotation_counts", "generate", "grid_step", "image_rng",
    "main", "make_scene", "planted_triplet", "region_phrases", "relation_truth", "sample_scene",
    "zero_shot_ids",
]
