"""What models and their outputs need to know about a dataset, without the data itself.

`DatasetFacts` = the vocabularies (classes, predicates, caption words), the training-set
statistics (FREQ's table, few-shot buckets, priors) and the zero-shot triplet list. A prepared
dataset has them (`PreparedDataset.facts`); every training run also saves them in its own
directory (`<workdir>/dataset/`), so a finished run can be loaded, evaluated against a dataset
copy elsewhere, or used to predict on a machine that has only the run directory.

Files written by `save(directory)`: `facts.json` (format, vocabularies, zero-shot triplets,
where the data came from) and the statistics' `statistics.npz` + `statistics.json`
(`data_pipelines.statistics`). `facts.json` is written last, so a reader that finds it finds a
complete set.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from data_pipelines.errors import DataFormatError, atomic_write_bytes, load_json
from data_pipelines.pipeline import flip_predicate_pairs
from data_pipelines.statistics import DatasetStatistics

FACTS_FILE = "facts.json"
FORMAT = "sgg_jax.dataset_facts"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
    """Vocabularies, training statistics and zero-shot triplets of one dataset.

    Attributes:
      idx_to_label: C+1 class names, index 0 "__background__".
      idx_to_predicate: P+1 predicate names, index 0 "__background__".
      idx_to_word: caption vocabulary (0 <pad>, 1 <start>, 2 <end>, 3 <unk>, then words).
      statistics: training-set counts (`DatasetStatistics`).
      zero_shot_triplets: [Z, 3] (subject, predicate, object) class ids, or None.
      zero_shot_source: where the list came from ("test minus train", a file name).
      source: a human-readable note of the data it describes (name and directory).
    """

    idx_to_label: tuple[str, ...]
    idx_to_predicate: tuple[str, ...]
    idx_to_word: tuple[str, ...]
    statistics: DatasetStatistics
    zero_shot_triplets: np.ndarray | None = None
    zero_shot_source: str = ""
    source: str = ""

    @property
    def num_classes(self) -> int:
        """C, object classes without background."""
        return len(self.idx_to_label) - 1

    @property
    def num_predicates(self) -> int:
        """P, predicates without background."""
        return len(self.idx_to_predicate) - 1

    @property
    def num_words(self) -> int:
        """V, caption words including the four special tokens."""
        return len(self.idx_to_word)

    def flip_predicate_map(self) -> tuple[tuple[int, int], ...]:
        """Left/right predicate pairs of this dataset (swapped by horizontal flips)."""
        return flip_predicate_pairs(self.idx_to_predicate)

    def triplet_counts(self) -> np.ndarray:
        """Training triplet counts [Z, 4] (subject, predicate, object, count), for few-shot
        recall."""
        return self.statistics.triplet_counts()

    def save(self, directory: str | os.PathLike) -> str:
        """Writes the statistics, then `facts.json` (atomically); returns the directory."""
        directory = os.fspath(directory)
        self.statistics.save(directory)
        zs = None if self.zero_shot_triplets is None else \
            np.asarray(self.zero_shot_triplets, np.int64).reshape(-1, 3).tolist()
        doc = dict(format=FORMAT, format_version=FORMAT_VERSION,
                   idx_to_label=list(self.idx_to_label),
                   idx_to_predicate=list(self.idx_to_predicate),
                   idx_to_word=list(self.idx_to_word), zero_shot_triplets=zs,
                   zero_shot_source=self.zero_shot_source, source=self.source)
        atomic_write_bytes(os.path.join(directory, FACTS_FILE),
                           json.dumps(doc, indent=1).encode("utf-8"))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DatasetFacts":
        """Reads what `save` wrote; a missing or malformed file is a DataFormatError naming
        it."""
        directory = os.fspath(directory)
        path = os.path.join(directory, FACTS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no dataset facts (runs trained by this version "
                                    "of sgg_jax save them in <workdir>/dataset/)")
        doc = load_json(path, "dataset facts")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DataFormatError(path, "format", repr(FORMAT), repr(
                doc.get("format") if isinstance(doc, dict) else type(doc).__name__))
        if int(doc.get("format_version", 0)) > FORMAT_VERSION:
            raise DataFormatError(path, "format_version", f"<= {FORMAT_VERSION} (this sgg_jax)",
                                  str(doc.get("format_version")))
        names = {}
        for key in ("idx_to_label", "idx_to_predicate", "idx_to_word"):
            value = doc.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataFormatError(path, key, "a list of names", repr(value)[:60])
            names[key] = tuple(value)
        statistics = DatasetStatistics.load(directory)
        if (statistics.num_classes, statistics.num_predicates) != (
                len(names["idx_to_label"]) - 1, len(names["idx_to_predicate"]) - 1):
            raise DataFormatError(
                path, "idx_to_label / idx_to_predicate",
                f"{statistics.num_classes} classes and {statistics.num_predicates} predicates "
                "as in statistics.json", f"{len(names['idx_to_label']) - 1} and "
                f"{len(names['idx_to_predicate']) - 1}")
        zs = doc.get("zero_shot_triplets")
        return cls(**names, statistics=statistics,
                   zero_shot_triplets=None if zs is None else
                   np.asarray(zs, np.int64).reshape(-1, 3),
                   zero_shot_source=str(doc.get("zero_shot_source", "")),
                   source=str(doc.get("source", "")))

