"""A trained detector reused by another run (`config.model.detector.checkpoint`).

The detector sees the images at the size it was trained at (`canvas_size`: the data
pipeline letterboxes them a second time, `Batch.detector_images`), and its boxes are scaled to
the model's canvas, so relation models keep their own input size. The checkpoint is a finished
run (`configs/detector.py`, or any run whose plan has a detector
stage) or one stage's checkpoint directory (every stage saves the whole parameter tree, so a
relation stage of an SGDet run holds its detector too). The run then trains no detector: the
"detector" group and the detector's frozen collections are loaded when parameters are
initialised. What would make the reuse wrong is refused before anything compiles, with one
line naming the checkpoint and what differs: another detector architecture or input size
(`check_config`, before any data is read) or another class list (`check_classes`, once the
dataset's facts are known). The architecture fields a run leaves at its preset's values are
taken from the checkpoint's run (`adopt_architecture`), so `--config.model.detector.checkpoint`
alone is enough; only a value set explicitly (on the command line) can disagree, and that is
refused.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import ml_collections

from data_pipelines.facts import DatasetFacts
from sgg_jax.models.detection.build import DETECTOR_ARCHITECTURE_FIELDS
from sgg_jax.models.registry import DETECTOR_GROUP
from sgg_jax.training import optim, runs


class DetectorSourceError(ValueError):
    """The detector checkpoint is missing, unfinished or does not fit this run."""


@dataclasses.dataclass(frozen=True)
class DetectorSource:
    """Where a reused detector comes from: its run, stage directory and step."""

    path: str
    workdir: str
    directory: str
    step: int
    config: ml_collections.ConfigDict


def _detector_stage(config: ml_collections.ConfigDict) -> str | None:
    """The name of a saved config's detector stage (kind "detector", or the legacy name)."""
    for name, stage in config.train.stages.items():
        if str(stage.get("kind", "")) == "detector" or (
                not stage.get("kind") and optim.split_list(stage.losses) == ["detection"]):
            return name
    return None


def locate(path: str) -> DetectorSource:
    """The finished checkpoint that holds the detector at `path` (a run or a stage dir)."""
    if not os.path.exists(path):
        raise DetectorSourceError(f"config.model.detector.checkpoint={path!r}: does not exist "
                                  "(expected a finished detector run or a stage's checkpoint "
                                  "directory)")
    try:
        workdir, root = runs.find_run(path)
    except FileNotFoundError as e:
        raise DetectorSourceError(f"config.model.detector.checkpoint={path!r}: {e}") from None
    config = runs.load_run_config(workdir)
    directory = root if root != workdir else None
    if directory is None:
        stage = _detector_stage(config)
        if stage is None:
            raise DetectorSourceError(f"config.model.detector.checkpoint={path!r}: that run "
                                      "has no detector stage")
        directory = runs.stage_dir(workdir, stage)
    step = runs.finished_step(directory)
    if step is None:
        steps = runs.checkpoint_steps(directory)
        raise DetectorSourceError(
            f"config.model.detector.checkpoint={path!r}: {directory} has not finished "
            f"(checkpoints {steps or 'none'}); finish that run first")
    return DetectorSource(path=path, workdir=workdir, directory=directory, step=step,
                          config=config)


def canvas_size(config: ml_collections.ConfigDict) -> int:
    """The detector's canvas size: `input.detector_image_size`, else a reused detector's own
    input size, else `input.image_size`."""
    explicit = int(config.input.get("detector_image_size", 0) or 0)
    if explicit:
        return explicit
    path = str(config.model.detector.get("checkpoint", "") or "")
    if path and os.path.exists(path):
        try:
            workdir, _ = runs.find_run(os.path.abspath(os.path.expanduser(path)))
            return int(runs.load_run_config(workdir).input.image_size)
        except (FileNotFoundError, runs.RunConfigError):
            pass  # check_config reports it
    return int(config.input.image_size)


# Test-time proposal counts: the reused detector proposes as it did when its AP was measured
# (adopted like the architecture, but not compared: a run may set its own).
PROPOSAL_FIELDS = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test")


def adopt_architecture(config: ml_collections.ConfigDict, explicit: Sequence[str] = ()
                       ) -> list[str]:
    """Sets this run's detector architecture fields (and test-time proposal counts,
    `PROPOSAL_FIELDS`) to the reused checkpoint's, except those
    in `explicit` (dotted keys set by the user, which `check_config` then compares). Returns
    the fields that changed. No checkpoint, or one that cannot be read: nothing changes
    (`check_config` reports the latter)."""
    path = str(config.model.detector.get("checkpoint", "") or "")
    if not path:
        return []
    try:
        source = locate(os.path.abspath(os.path.expanduser(path)))
    except (DetectorSourceError, runs.RunConfigError):
        return []
    changed = []
    with config.unlocked():
        for field in DETECTOR_ARCHITECTURE_FIELDS + PROPOSAL_FIELDS:
            if f"model.detector.{field}" in explicit or field not in source.config.model.detector:
                continue
            mine, theirs = config.model.detector.get(field), source.config.model.detector[field]
            if runs.flatten({field: mine}) == runs.flatten({field: theirs}):
                continue
            if isinstance(mine, tuple) and isinstance(theirs, list):
                theirs = tuple(theirs)
            if field in config.model.detector:
                del config.model.detector[field]  # the type may differ (a tuple of floats)
            config.model.detector[field] = theirs
            changed.append(field)
    return changed


def check_config(config: ml_collections.ConfigDict) -> DetectorSource | None:
    """The configured detector checkpoint, checked against this run's detector architecture
    and input size; None when the run trains its own detector."""
    path = str(config.model.detector.get("checkpoint", "") or "")
    if not path:
        return None
    if config.model.detector.get("weights") or config.model.detector.get("backbone_weights"):
        raise DetectorSourceError("config.model.detector.checkpoint and .weights / "
                                  ".backbone_weights are both set: a reused detector brings "
                                  "its own weights")
    source = locate(os.path.abspath(os.path.expanduser(path)))
    differ = []
    for field in DETECTOR_ARCHITECTURE_FIELDS:
        mine, theirs = config.model.detector.get(field), source.config.model.detector.get(field)
        if runs.flatten({field: mine}) != runs.flatten({field: theirs}):
            differ.append(f"model.detector.{field} {theirs!r} there, {mine!r} here")
    if canvas_size(config) != int(source.config.input.image_size):
        differ.append(f"input.image_size {source.config.input.image_size} there, "
                      f"input.detector_image_size {canvas_size(config)} here")
    if differ:
        raise DetectorSourceError(f"config.model.detector.checkpoint={path!r} does not fit this "
                                  f"run: {'; '.join(differ)}")
    return source


def check_classes(source: DetectorSource, facts: DatasetFacts) -> None:
    """The detector was trained on this run's class list."""
    try:
        theirs = DatasetFacts.load(runs.facts_dir(source.workdir))
    except FileNotFoundError:
        return  # a run saved before runs kept their facts: its config's data are compared
    if list(theirs.idx_to_label) != list(facts.idx_to_label):
        raise DetectorSourceError(
            f"config.model.detector.checkpoint={source.path!r} was trained on "
            f"{theirs.num_classes} classes ({theirs.source}), this run has "
            f"{facts.num_classes} ({facts.source}): another class list")


def load(source: DetectorSource, detector_params: Any, detector_state: dict
         ) -> tuple[Any, dict]:
    """(params, frozen collections) of the reused detector, shaped and placed like the given
    initial ones."""
    from sgg_jax.training.checkpointing import StageCheckpointer, abstract_like

    ckpt = StageCheckpointer(source.directory)
    try:
        abstract = abstract_like({DETECTOR_GROUP: detector_params})
        frozen = {"detector": detector_state} if detector_state else None
        restored = ckpt.restore_params(source.step, abstract, frozen)
    except ValueError as e:
        raise DetectorSourceError(f"config.model.detector.checkpoint={source.path!r}: {e}") \
            from None
    finally:
        ckpt.close()
    if frozen is None:
        return restored[DETECTOR_GROUP], detector_state
    params, saved = restored
    return params[DETECTOR_GROUP], dict(saved.get("detector", detector_state))

