"""log p(x, bracketing) with labels summed out (`bracketing_score`) against enumeration.

For both grammar kinds, tiny enough that every labeled tree of a 4-word sentence can be
listed: the DP over one bracketing must equal the log-sum-exp of `log_joint` over that
bracketing's labelings, value and gradient; for the PCFG, the bracketings must in turn sum
to the inside algorithm's log p(x).
"""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from grammars.charts import inside
from grammars.binary_trees import BinaryTrees
from grammars.models import build_grammar
from tree_enumeration import all_trees

NT, T, V = 3, 2, 5
WORDS = [[1, 4, 0, 2], [3, 3, 1, 0]]     # the second sentence is 3 words, padded


def grammar(kind: str):
    m = build_grammar(kind, V, seed=5, nonterminals=NT, preterminals=T, symbol_dim=8).double()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():                 # sharpen, so labelings differ a lot in probability
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return m


def as_trees(trees: list[list[tuple[int, int, int]]], length: int) -> BinaryTrees:
    M = max(len(t) for t in trees)
    spans = torch.zeros(len(trees), M, 2, dtype=torch.long)
    labels = torch.full((len(trees), M), -1, dtype=torch.long)
    for r, tree in enumerate(trees):
        for m, (i, j, a) in enumerate(reversed(tree)):     # any node order is allowed
            spans[r, m] = torch.tensor([i, j])
            labels[r, m] = a
    return BinaryTrees(spans=spans, labels=labels, lengths=torch.full((len(trees),), length))


def by_bracketing(length: int) -> dict[tuple, list]:
    groups = defaultdict(list)
    for tree in all_trees(0, length, NT):
        groups[tuple(sorted((i, j) for i, j, _ in tree))].append(tree)
    return groups


@pytest.mark.parametrize("kind", ["npcfg", "ncfg"])
@pytest.mark.parametrize("sentence", [0, 1])
def test_dp_equals_the_sum_over_labelings(kind, sentence):
    model = grammar(kind)
    length = 4 - sentence
    ids_row = torch.tensor(WORDS[sentence])[None]
    totals = []
    for spans, trees in by_bracketing(length).items():
        ids = ids_row.expand(len(trees), -1)
        lengths = torch.full((len(trees),), length)
        z = as_trees(trees, length)
        model.zero_grad()
        brute = torch.logsumexp(model.log_joint(ids, lengths, z), 0)
        brute.backward()
        want = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        dp = model.log_joint_bracketing(ids, lengths, z)
        # every labeling of one bracketing scores the same: the labels are ignored
        assert torch.allclose(dp, dp[:1].expand_as(dp), atol=1e-12)
        assert float(dp[0].detach()) == pytest.approx(float(brute.detach()), abs=1e-9), spans
        dp[0].backward()
        for g, w in zip((p.grad for p in model.parameters()), want):
            assert torch.allclose(g, w, atol=1e-9)
        totals.append(dp[0].detach())
    if kind == "npcfg":
        lengths = torch.tensor([length])
        log_z = inside.log_partition(model.params(ids_row[:, :length], lengths))
        assert float(torch.logsumexp(torch.stack(totals), 0)) == pytest.approx(
            float(log_z[0].detach()), abs=1e-9)


@pytest.mark.parametrize("kind", ["npcfg", "ncfg"])
def test_batches_mix_lengths_and_one_word_sentences_get_minus_infinity(kind):
    model = grammar(kind)
    four = [(0, 2, 1), (2, 4, 0), (0, 4, 2)]
    three = [(1, 3, 2), (0, 3, 0)]
    z = BinaryTrees(spans=torch.tensor([[[0, 2], [2, 4], [0, 4]], [[1, 3], [0, 3], [0, 0]],
                                        [[0, 0], [0, 0], [0, 0]]]),
                    labels=torch.tensor([[1, 0, 2], [2, 0, -1], [-1, -1, -1]]),
                    lengths=torch.tensor([4, 3, 1]))
    ids = torch.tensor(WORDS + [[2, 0, 0, 0]])
    together = model.log_joint_bracketing(ids, torch.tensor([4, 3, 1]), z)
    alone = [model.log_joint_bracketing(ids[r:r + 1, :n], torch.tensor([n]),
                                        as_trees([tree], n))
             for r, (tree, n) in enumerate([(four, 4), (three, 3)])]
    assert float(together[0].detach()) == pytest.approx(float(alone[0][0].detach()), abs=1e-10)
    assert float(together[1].detach()) == pytest.approx(float(alone[1][0].detach()), abs=1e-10)
    assert together[2] == float("-inf")
