"""SGP (Herzig et al. 2018): a GPI network refining a base model's logits.

    python -m sgg_jax.main --config configs/sgp.py --workdir runs/sgp_motifs \\
        --config.model.base=motifs --config.model.base_run=runs/motifs

`model.base` names the base (`freq`, `imp`, `kern`, `motifs` or `msdn`); its config section is
`model.bases.<name>` (the base's own config file at the same preset), or, with
`model.base_run` = a finished run of that base, that run's: the `sgp` stage then restores the
base's parameters from it, the base's own stages are skipped and SGDet uses the base run's
detector. Without `base_run` the run trains the base first (stages `objects` and `relations`
over `base/...`, on the generic object and relation losses), then GPI. A base's auxiliary
networks (MSDN's region RPN, which its SGDet reads) keep their own stage (`regions`, after the
detector), or are loaded from `base_run`. The base stays frozen
(`model.train_base=True` trains it with GPI). SGCls is SGP's reported mode.

The argument after `:` names a preset, a base or both: `configs/sgp.py:imp`,
`configs/sgp.py:imp,tiny` (the base's section at that preset).

Presets (`--config configs/sgp.py:<preset>`):
  (default)  synthetic data, the bases' default presets, GPI 500 wide (SGP's), 2 steps.
  tiny       a seconds-long smoke run (tests): tiny bases (IMP unless named), GPI 32 wide.
  vg         the bases' vg presets on a local VG150 copy; GPI as published (500 wide, Adam 1e-4).
"""
import importlib.util
import os

import ml_collections

from sgg_jax.config import apply_preset, get_base_config, stage

BASES = ("freq", "imp", "kern", "motifs", "msdn")


def base_config(name: str, preset: str) -> ml_collections.ConfigDict:
    """configs/<name>.py:<preset>, loaded beside this file."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"sgg_jax_config_base_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def parse_arg(arg: str | None) -> tuple[str, str]:
    """'imp', 'imp,tiny', 'tiny' or None -> (base, preset). The base defaults to Motifs (SGP's
    released inputs are a Motifs-family baseline's), in `tiny` to IMP (the tests' SGP: it
    compiles in a fraction of Motifs' time)."""
    base, preset = "", "default"
    for token in (t.strip() for t in (arg or "").split(",") if t.strip()):
        if token in BASES:
            base = token
        else:
            preset = token
    return base or ("imp" if preset == "tiny" else "motifs"), preset


def get_config(arg: str | None = None):
    base_name, preset = parse_arg(arg)
    c = get_base_config()
    c.model.name = "sgp"
    c.model.base = base_name
    c.model.base_run = ""
    c.model.train_base = False
    bases = {b: base_config(b, preset) for b in BASES}
    c.model.bases = ml_collections.ConfigDict({b: bc.model.to_dict() for b, bc in bases.items()})
    c.model.gpi_dim = 500  # SGP's hidden width
    c.model.embed_dim = 64  # learned class / predicate embeddings (SGP: 300-d word2vec)
    c.model.iterations = 2  # SGP's code (rnn_steps = 2); its README: 3 in the paper
    c.model.gpi_dropout = 0.1  # SGP: keep probability 0.9
    c.loss.obj_weight = 4.0  # SGP's lr_object_coeff
    base = ("base/backbone", "base/roi_features", "base/obj_classifier")
    c.train.stages.objects.trainable = ",".join(base)
    c.train.stages.relations.trainable = ",".join(base[1:] + ("base/relation_head",))
    c.train.stages.sgp = stage(num_steps=400, trainable=("gpi",), losses=("object", "relation"),
                               learning_rate=1e-3, warmup_steps=20, mode="sgcls")
    c.train.stage_order = "detector,objects,relations,sgp"
    # SGDet boxes as the named base reports them (MSDN: moved by its box heads).
    c.eval.sgdet_refine_boxes = bool(bases[base_name].eval.get("sgdet_refine_boxes", False))
    # The bases' auxiliary networks' stages (MSDN's `regions`); the model's complete_config puts
    # the base's into the order (after the detector), or loads them from model.base_run.
    for bc in bases.values():
        for name, st in bc.train.stages.items():
            if st.kind not in ("relation", "detector") and name not in c.train.stages:
                c.train.stages[name] = st
    c = apply_preset(c, preset)
    if preset == "tiny":
        c.model.gpi_dim = 32
        c.model.embed_dim = 8
    elif preset == "vg":
        c.train.stages.sgp.learning_rate = 1e-4  # SGP: Adam 1e-4
        c.train.stages.sgp.num_steps = 10_000
        c.train.stages.sgp.optimizer = "adam"
    return c
