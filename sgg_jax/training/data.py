"""The trainer's view of the data: config -> prepared dataset -> loaders of host-local batches.

Training order is *process-count invariant*: global batch b holds the same images whether one
process or many read it. Each epoch is one seeded permutation of the whole training split; global
batch b is positions [b*GB, (b+1)*GB) of it, and process p reads rows [p*LB, (p+1)*LB) of every
global batch. Augmentation randomness is seeded by (seed, epoch, position), not by the reading
process or worker, so a 2-process run sees exactly the batches of a 1-process run, and a resumed
run (grain iterator state in the checkpoint) exactly those of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from data_pipelines import pipeline
from data_pipelines.batch import Batch
from data_pipelines.dataset import DataConfig, PreparedDataset, prepare_dataset
from data_pipelines.facts import DatasetFacts
from sgg_jax.training import mesh as mesh_lib
from sgg_jax.training.detector_source import canvas_size

MAX_EPOCHS = 10_000  # the training stream's virtual length; stages end by step count


def prepare(config: ml_collections.ConfigDict) -> PreparedDataset:
    """Generates/builds the dataset once (process 0 first, the others then open it)."""
    data_config = DataConfig.from_dict(dict(config.data))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        if jax.process_index() == 0:
            prepare_dataset(data_config)
        multihost_utils.sync_global_devices("sgg_jax: dataset prepared")
    return prepare_dataset(data_config, progress=jax.process_index() == 0)


def input_config(config: ml_collections.ConfigDict, facts: DatasetFacts, *, batch_size: int,
                 train: bool, seed: int = 0) -> pipeline.InputConfig:
    """The pipeline's InputConfig from the `input` section (per-process batch size)."""
    i = config.input
    detector_size = canvas_size(config)
    return pipeline.InputConfig(
        image_size=int(i.image_size),
        detector_image_size=detector_size if detector_size != int(i.image_size) else 0,
        max_objects=int(i.max_objects),
        max_relations=int(i.max_relations), max_regions=int(i.max_regions),
        max_phrase_len=int(i.max_phrase_len), batch_size=batch_size, shuffle=train, seed=seed,
        worker_count=int(i.worker_count), flip_prob=float(i.flip_prob) if train else 0.0,
        flip_predicate_map=facts.flip_predicate_map(),
        filter_duplicate_rels=bool(config.data.filter_duplicate_rels) and train)


@dataclasses.dataclass(frozen=True)
class GlobalOrderSource:
    """Random-access view of this process's rows of the global training stream, decoded,
    padded and augmented (see the module docstring)."""

    source: Any
    config: pipeline.InputConfig
    global_batch: int
    process_index: int
    process_count: int

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        return len(self.source) // self.global_batch

    def __len__(self) -> int:
        return MAX_EPOCHS * self.steps_per_epoch * self.local_batch

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        per_epoch = self.steps_per_epoch * self.local_batch
        epoch, r = divmod(int(k), per_epoch)
        b, i = divmod(r, self.local_batch)
        position = b * self.global_batch + self.process_index * self.local_batch + i
        record = int(_permutation(len(self.source), self.config.seed, epoch)[position])
        ex = pipeline.DecodeAndPad(self.config).map(self.source[record])
        rng = np.random.default_rng((self.config.seed, epoch, position))
        c = self.config
        if c.filter_duplicate_rels:
            ex = pipeline.one_predicate_per_pair(ex, rng)
        if c.flip_prob > 0 and rng.random() < c.flip_prob:
            ex = pipeline.flip_example(ex, pipeline.predicate_permutation(c.flip_predicate_map))
        return ex


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(n)


def train_loader(config: ml_collections.ConfigDict, data: PreparedDataset,
                 mesh: jax.sharding.Mesh, seed: int) -> grain.DataLoader:
    """The endless training stream of this process's host-local batches (a grain DataLoader,
    whose iterator state is checkpointed with the train state)."""
    global_batch = int(config.input.batch_size)
    local = mesh_lib.local_batch_size(global_batch, mesh)
    cfg = input_config(config, data.facts, batch_size=local, train=True, seed=seed)
    if len(data.sources["train"]) < global_batch:
        raise ValueError(f"the training split has {len(data.sources['train'])} images, fewer "
                         f"than config.input.batch_size={global_batch}")
    source = GlobalOrderSource(data.sources["train"], cfg, global_batch, jax.process_index(),
                               jax.process_count())
    sampler = grain.samplers.IndexSampler(len(source), shard_options=grain.sharding.NoSharding(),
                                          shuffle=False, num_epochs=1, seed=0)
    batch = grain.transforms.Batch(local, drop_remainder=True,
                                   batch_fn=pipeline.StackPadded(local))
    return grain.DataLoader(data_source=source, sampler=sampler, operations=[batch],
                            worker_count=cfg.worker_count,
                            read_options=grain.ReadOptions(num_threads=cfg.read_threads,
                                                           prefetch_buffer_size=cfg.read_prefetch))


def eval_loader(config: ml_collections.ConfigDict, data: PreparedDataset,
                mesh: jax.sharding.Mesh, split: str):
    """One padded pass over `split`, this process's contiguous shard."""
    if split not in data.sources:
        raise ValueError(f"config.eval.split={split!r}: this dataset has {sorted(data.sources)}")
    local = mesh_lib.local_batch_size(int(config.input.eval_batch_size), mesh)
    return data.loader(split, input_config(config, data.facts, batch_size=local, train=False),
                       evaluation=True)


def dummy_batch(config: ml_collections.ConfigDict, facts: DatasetFacts,
                batch_size: int = 1) -> Batch:
    """An all-padding batch with the configured shapes (for parameter initialisation)."""
    return pipeline.empty_batch(input_config(config, facts, batch_size=batch_size, train=False))
