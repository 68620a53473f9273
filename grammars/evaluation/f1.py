"""Unlabeled bracketing F1 exactly as DESIGN §6 fixes it (the protocol of Kim et al. 2019).

Per sentence: keep spans of width >= 2 that are not the whole sentence, deduplicated;
1-word sentences are skipped. Sentence F1 is the mean of per-sentence F1, where an empty gold
set gives recall 1 and an empty gold set with an empty prediction gives F1 = 1 (so every
2-word sentence scores 1). Corpus F1 pools true positives, predictions and gold counts.

Inputs are plain span lists (end exclusive), so gold columns of a prepared corpus, baselines
and a model's `BinaryTrees.span_lists()` plug in alike. Figures are percentages (0–100).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

Span = tuple[int, int]
BUCKETS = (10, 20, 40)


def scored_spans(spans: Iterable[Sequence[int]], length: int) -> set[Span]:
    """The spans that count: width >= 2, not the whole sentence, each once."""
    return {(int(i), int(j)) for i, j in spans if j - i >= 2 and (i, j) != (0, length)}


@dataclass
class SentenceCounts:
    """Per-sentence arrays over the scored (length >= 2) sentences."""

    lengths: np.ndarray
    matched: np.ndarray
    predicted: np.ndarray
    gold: np.ndarray
    f1: np.ndarray


def count_sentences(gold_spans: Sequence[Iterable[Sequence[int]]],
                    pred_spans: Sequence[Iterable[Sequence[int]]],
                    lengths: Sequence[int]) -> SentenceCounts:
    """Match gold and predicted spans sentence by sentence; 1-word sentences are left out."""
    if not (len(gold_spans) == len(pred_spans) == len(lengths)):
        raise ValueError(f"{len(gold_spans)} gold, {len(pred_spans)} predicted span lists "
                         f"and {len(lengths)} lengths")
    rows = []
    for gold, pred, n in zip(gold_spans, pred_spans, lengths):
        if n < 2:
            continue
        g, p = scored_spans(gold, n), scored_spans(pred, n)
        rows.append((n, len(g & p), len(p), len(g)))
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    n, tp, npred, ngold = table.T
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(ngold == 0, 1.0, tp / np.maximum(ngold, 1))
        precision = np.where(npred == 0, np.where(ngold == 0, 1.0, 0.0), tp / np.maximum(npred, 1))
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return SentenceCounts(n, tp, npred, ngold, f1)


@dataclass
class BucketScore:
    max_length: int | None       # None = all lengths
    num_sentences: int
    sentence_f1: float
    corpus_f1: float


@dataclass
class F1Report:
    """What `evaluate` prints and writes: headline figures plus the length breakdown."""

    sentence_f1: float
    corpus_f1: float
    num_sentences: int           # scored sentences (length >= 2, within the length filter)
    num_skipped: int             # 1-word sentences and those beyond the length filter
    precision: float
    recall: float
    buckets: list[BucketScore] = field(default_factory=list)
    length_filter: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _pooled(counts: SentenceCounts, mask: np.ndarray) -> tuple[float, float, float]:
    """Corpus precision, recall, F1 from pooled counts; nothing to find and nothing found = 1."""
    tp, npred, ngold = (int(a[mask].sum()) for a in (counts.matched, counts.predicted, counts.gold))
    precision = tp / npred if npred else (1.0 if ngold == 0 else 0.0)
    recall = tp / ngold if ngold else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _percent(x: float) -> float:
    return round(100.0 * x, 4)


def score_spans(gold_spans: Sequence[Iterable[Sequence[int]]],
                pred_spans: Sequence[Iterable[Sequence[int]]],
                lengths: Sequence[int], max_length: int | None = None,
                buckets: Sequence[int] = BUCKETS) -> F1Report:
    """Sentence and corpus F1 (percent) of predictions against gold, with length buckets.

    `max_length` restricts scoring to sentences of at most that many words (None = all).
    """
    counts = count_sentences(gold_spans, pred_spans, lengths)
    keep = np.ones_like(counts.lengths, dtype=bool) if max_length is None else \
        counts.lengths <= max_length
    total = int(keep.sum())
    precision, recall, corpus = _pooled(counts, keep)
    sentence = float(counts.f1[keep].mean()) if total else 0.0
    rows = []
    for limit in [*buckets, None]:
        mask = keep if limit is None else keep & (counts.lengths <= limit)
        if limit is not None and max_length is not None and limit > max_length:
            continue
        size = int(mask.sum())
        rows.append(BucketScore(limit, size,
                                _percent(float(counts.f1[mask].mean())) if size else 0.0,
                                _percent(_pooled(counts, mask)[2]) if size else 0.0))
    return F1Report(_percent(sentence), _percent(corpus), total, len(lengths) - total,
                    _percent(precision), _percent(recall), rows,
                    {"min_length": 2, "max_length": max_length})
