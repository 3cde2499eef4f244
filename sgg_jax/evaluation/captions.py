"""Region caption quality: corpus BLEU-4 of generated captions against the ground-truth ones.

Protocol ("given regions"): each test region's box is given (the ground-truth caption regions,
as dense-captioning papers' "caption generation with GT boxes"); the model captions it and the
caption is compared with that region's own ground-truth phrase. Corpus BLEU-4 over all test
regions (sacrebleu, `tokenize="none"`: our words are already tokens; sacrebleu's default
exponential smoothing only matters when some n-gram order has no match at all). Scores are in
percent, as sacrebleu reports them.

Token ids follow the input pipeline: 0 <pad>, 1 <start>, 2 <end>, 3 <unk>, words from 4.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

PAD, START, END = 0, 1, 2
PROTOCOL = "given regions (ground-truth region boxes), one reference per region"


def tokens_to_words(tokens: Sequence[int] | np.ndarray, idx_to_word: Sequence[str]) -> list[str]:
    """One caption's ids -> words: a leading <start> is skipped, decoding stops at <end> or
    <pad>. Ids outside the vocabulary raise ValueError."""
    words = []
    for i, t in enumerate(np.asarray(tokens, np.int64).reshape(-1)):
        if i == 0 and t == START:
            continue
        if t in (END, PAD):
            break
        if not 0 <= t < len(idx_to_word):
            raise ValueError(f"caption token {int(t)} at position {i} is outside the vocabulary "
                             f"of {len(idx_to_word)} words")
        words.append(idx_to_word[t])
    return words


def corpus_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
                ) -> dict[str, float | list[float]]:
    """Corpus BLEU-4 (sacrebleu) of word lists against one reference word list each.

    Returns {"BLEU-4": score in %, "precisions": [p1..p4] in %, "brevity_penalty": bp}.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"corpus_bleu: {len(hypotheses)} hypotheses but {len(references)} "
                         "references (one reference per hypothesis expected)")
    import sacrebleu

    if not hypotheses:
        return {"BLEU-4": float("nan"), "precisions": [float("nan")] * 4,
                "brevity_penalty": float("nan")}
    result = sacrebleu.corpus_bleu([" ".join(h) for h in hypotheses],
                                   [[" ".join(r) for r in references]], tokenize="none",
                                   force=True)
    return {"BLEU-4": float(result.score), "precisions": [float(p) for p in result.precisions],
            "brevity_penalty": float(result.bp)}


@dataclasses.dataclass
class CaptionEvaluator:
    """Accumulates (generated, ground-truth) captions of real regions, then corpus BLEU-4.

    `add(pred_tokens [Q, L], gt_tokens [Q, L], region_mask [Q])` per image; `compute()` ->
    {"BLEU-4", "precisions", "brevity_penalty", "num_regions", "mean_length", "setting",
    "examples"} (the first `num_examples` (generated, reference) pairs as strings).
    """

    idx_to_word: Sequence[str]
    num_examples: int = 5
    hypotheses: list = dataclasses.field(default_factory=list)
    references: list = dataclasses.field(default_factory=list)

    def add(self, pred_tokens: np.ndarray, gt_tokens: np.ndarray, region_mask: np.ndarray) -> None:
        pred_tokens, gt_tokens = np.asarray(pred_tokens), np.asarray(gt_tokens)
        mask = np.asarray(region_mask, bool).reshape(-1)
        if pred_tokens.ndim != 2 or gt_tokens.ndim != 2 or len(pred_tokens) != len(mask) \
                or len(gt_tokens) != len(mask):
            raise ValueError(f"CaptionEvaluator.add: expected pred_tokens [Q, L], gt_tokens "
                             f"[Q, L'], region_mask [Q]; got {pred_tokens.shape}, "
                             f"{gt_tokens.shape}, {mask.shape}")
        for q in np.flatnonzero(mask):
            self.hypotheses.append(tokens_to_words(pred_tokens[q], self.idx_to_word))
            self.references.append(tokens_to_words(gt_tokens[q], self.idx_to_word))

    def compute(self) -> dict:
        out: dict = dict(corpus_bleu(self.hypotheses, self.references))
        n = len(self.hypotheses)
        out["num_regions"] = n
        out["mean_length"] = (sum(len(h) for h in self.hypotheses) / n) if n else math.nan
        out["setting"] = PROTOCOL
        out["examples"] = [[" ".join(h), " ".join(r)] for h, r in
                           zip(self.hypotheses[:self.num_examples],
                               self.references[:self.num_examples])]
        return out
