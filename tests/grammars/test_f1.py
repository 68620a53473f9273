"""The F1 protocol's corners (DESIGN §6) and the baselines that feed it."""
from __future__ import annotations

from collections import Counter

import pytest

from grammars.evaluation.baselines import (baseline_spans, binarize, left_branching, oracle_trees,
                                random_trees, right_branching)
from grammars.evaluation.f1 import count_sentences, score_spans, scored_spans


def test_scored_spans_drop_width_one_whole_sentence_and_duplicates():
    assert scored_spans([(0, 5), (0, 1), (1, 3), (1, 3), [2, 5]], 5) == {(1, 3), (2, 5)}


def test_two_word_sentences_score_one_whatever_is_predicted():
    report = score_spans([[(0, 2)], [(0, 2)]], [[(0, 2)], []], [2, 2])
    assert report.sentence_f1 == 100.0 and report.corpus_f1 == 100.0
    assert report.num_sentences == 2


def test_one_word_sentences_are_skipped():
    report = score_spans([[], [(0, 3), (0, 2)]], [[], [(0, 3), (1, 3)]], [1, 3])
    assert report.num_sentences == 1 and report.num_skipped == 1
    assert report.sentence_f1 == 0.0           # a skipped sentence would have added a 1


def test_unary_chain_at_root_is_one_span():
    # gold (ROOT (S (NP a b c))) gives (0,3) three times; after dedup and dropping the whole
    # sentence the gold set is empty, so a flat prediction is perfect
    report = score_spans([[(0, 3), (0, 3), (0, 3)]], [[(0, 3)]], [3])
    assert report.sentence_f1 == 100.0


def test_empty_gold_gives_recall_one_and_a_wrong_guess_scores_zero():
    counts = count_sentences([[(0, 3)]], [[(0, 3), (1, 3)]], [3])
    assert counts.gold.tolist() == [0] and counts.predicted.tolist() == [1]
    assert counts.f1.tolist() == [0.0]         # precision 0, recall 1
    assert score_spans([[(0, 3)]], [[(0, 3)]], [3]).sentence_f1 == 100.0


def test_duplicate_predicted_spans_count_once():
    report = score_spans([[(0, 4), (1, 3), (1, 3)]], [[(1, 3), (1, 3), (0, 4)]], [4])
    assert report.precision == 100.0 and report.recall == 100.0


def test_sentence_and_corpus_f1_differ_as_defined():
    gold = [[(0, 4), (0, 2), (2, 4)], [(0, 6), (0, 2), (2, 4), (4, 6), (2, 6)]]
    pred = [[(0, 4), (0, 2), (0, 3)], [(0, 6), (0, 2), (2, 4), (4, 6), (2, 6)]]
    report = score_spans(gold, pred, [4, 6])
    # sentence 1: gold {(0,2),(2,4)}, pred {(0,2),(0,3)} → P = R = 1/2; sentence 2: perfect
    assert report.sentence_f1 == pytest.approx(100 * (0.5 + 1.0) / 2)
    # pooled: tp = 1 + 4, predicted = 2 + 4, gold = 2 + 4 → 5/6
    assert report.corpus_f1 == pytest.approx(100 * 5 / 6, abs=1e-3)


def test_buckets_and_length_filter():
    lengths = [2, 5, 15, 30, 50]
    gold = right_branching(lengths)
    pred = left_branching(lengths)
    report = score_spans(gold, pred, lengths)
    assert [(b.max_length, b.num_sentences) for b in report.buckets] == [
        (10, 2), (20, 3), (40, 4), (None, 5)]
    assert report.buckets[0].sentence_f1 == pytest.approx(50.0)   # 2 words: 1; 5 words: 0
    capped = score_spans(gold, pred, lengths, max_length=20)
    assert capped.num_sentences == 3 and capped.num_skipped == 2
    assert [b.max_length for b in capped.buckets] == [10, 20, None]
    assert capped.length_filter == {"min_length": 2, "max_length": 20}


def test_mismatched_lengths_are_a_bug():
    with pytest.raises(ValueError):
        score_spans([[]], [[], []], [1])


def test_branching_baselines():
    assert right_branching([4]) == [[(0, 4), (1, 4), (2, 4)]]
    assert left_branching([4]) == [[(0, 4), (0, 3), (0, 2)]]
    assert right_branching([1]) == [[]]


def test_random_trees_are_binary_uniform_and_seeded():
    assert random_trees([7, 3], seed=3) == random_trees([7, 3], seed=3)
    trees = random_trees([4] * 1400, seed=0)
    assert all(len(t) == 3 and (0, 4) in t for t in trees)
    shapes = Counter(frozenset(t) for t in trees)
    assert len(shapes) == 5                            # Catalan(3) shapes over 4 words
    assert all(200 <= c <= 360 for c in shapes.values())   # each ≈ 280


def test_binarize_keeps_gold_and_is_binary():
    gold = [(0, 7), (0, 7), (1, 4), (4, 7), (5, 7)]
    tree = binarize(gold, 7)
    assert set(gold) <= set(tree)
    assert len(tree) == 6 and len(set(tree)) == 6
    spans = set(tree)                                   # every node splits in exactly two
    for i, j in spans:
        splits = [k for k in range(i + 1, j)
                  if ((i, k) in spans or k - i == 1) and ((k, j) in spans or j - k == 1)]
        assert len(splits) == 1
    assert oracle_trees([[], gold], [1, 7]) == [[], tree]


def test_oracle_has_full_recall():
    gold = [[(0, 6), (0, 2), (2, 6), (3, 6)], [(0, 3)]]
    report = score_spans(gold, baseline_spans("oracle", [6, 3], gold), [6, 3])
    assert report.recall == 100.0
    assert report.precision == pytest.approx(100 * 3 / 5)   # 3 gold of 4 + 1 scored spans


def test_model_predictions_plug_in_as_binary_trees():
    import torch

    from grammars.binary_trees import BinaryTrees

    trees = BinaryTrees(spans=torch.tensor([[[0, 3], [1, 3]], [[0, 2], [-1, -1]]]),
                        labels=torch.tensor([[0, 1], [0, -1]]), lengths=torch.tensor([3, 2]))
    gold = [[(0, 3), (1, 3)], [(0, 2)]]
    assert score_spans(gold, trees.span_lists(), [3, 2]).sentence_f1 == 100.0
