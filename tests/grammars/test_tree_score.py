"""tree_log_prob (preterminals summed out) against brute-force enumeration: summed over every
labeled binary tree it must give the inside partition, value and gradient."""
from __future__ import annotations

import itertools

import pytest
import torch

from grammars.charts import inside
from grammars.binary_trees import BinaryTrees
from grammars.charts.pcfg_params import PCFGParams
from grammars.charts.tree_score import tree_log_prob

F64 = torch.float64


def leaves(B, n, NT, T, shared, seed):
    g = torch.Generator().manual_seed(seed)
    S = NT + T
    return [torch.randn(1 if shared else B, NT, S * S, generator=g, dtype=F64).requires_grad_(),
            torch.randn(B, n, T, generator=g, dtype=F64).requires_grad_(),
            torch.randn(B, NT, generator=g, dtype=F64).requires_grad_()]


def make_params(rule_logits, term_logits, root_logits, lengths, rows=None) -> PCFGParams:
    """Params for the given sentences, optionally repeated per tree (`rows` indexes them)."""
    NT = root_logits.shape[1]
    S = int(rule_logits.shape[-1] ** 0.5)
    B = term_logits.shape[0]
    rules = rule_logits.log_softmax(-1).view(-1, NT, S, S).expand(B, NT, S, S)
    params = PCFGParams(root_logits.log_softmax(-1), rules, term_logits.log_softmax(-1), lengths)
    if rows is None:
        return params
    shared = params.rules.stride(0) == 0
    return PCFGParams(params.roots[rows],
                      params.rules[:1].expand(len(rows), -1, -1, -1) if shared
                      else params.rules[rows],
                      params.terms[rows], params.lengths[rows])


def labeled_trees(n: int, NT: int):
    """Every labeled binary tree over n words, as lists of (i, j, A)."""
    def shapes(i, j):
        if j - i == 1:
            yield []
            return
        for k in range(i + 1, j):
            for left in shapes(i, k):
                for right in shapes(k, j):
                    yield [(i, j)] + left + right
    for shape in shapes(0, n):
        for labels in itertools.product(range(NT), repeat=len(shape)):
            yield [(i, j, a) for (i, j), a in zip(shape, labels)]


def as_batch(trees, lengths, width) -> BinaryTrees:
    M = max(width - 1, 1)
    spans = torch.full((len(trees), M, 2), -1, dtype=torch.long)
    labels = torch.full((len(trees), M), -1, dtype=torch.long)
    for r, nodes in enumerate(trees):
        for m, (i, j, a) in enumerate(nodes):
            spans[r, m] = torch.tensor([i, j])
            labels[r, m] = a
    return BinaryTrees(spans, labels, torch.as_tensor(lengths))


@pytest.mark.parametrize("shared", [False, True])
def test_sum_over_all_trees_is_the_partition(shared):
    """Mixed lengths 2..4 in one batch, NT = 2, T = 3: value and gradient of
    logsumexp_z tree_log_prob(z) equal those of the inside log-partition."""
    lengths = torch.tensor([4, 2, 3, 4])
    NT, T = 2, 3
    logits = leaves(4, 4, NT, T, shared, seed=1)
    rows, trees = [], []
    for b, n in enumerate(lengths.tolist()):
        for t in labeled_trees(n, NT):
            rows.append(b)
            trees.append(t)
    rows = torch.tensor(rows)
    scores = tree_log_prob(make_params(*logits, lengths, rows), as_batch(trees, lengths[rows], 4))
    brute = torch.stack([scores[rows == b].logsumexp(0) for b in range(4)])
    exact = inside.log_partition(make_params(*logits, lengths))
    assert torch.allclose(brute, exact, rtol=1e-12, atol=1e-12)
    g_brute = torch.autograd.grad(brute.sum(), logits)
    g_exact = torch.autograd.grad(exact.sum(), logits)
    for a, b in zip(g_brute, g_exact):
        assert torch.allclose(a, b, atol=1e-10)


def test_node_order_and_padding_do_not_matter():
    lengths = torch.tensor([5, 3])
    params = make_params(*leaves(2, 5, 3, 4, False, seed=2), lengths)
    trees = [[(0, 5, 1), (0, 2, 0), (2, 5, 2), (3, 5, 1)], [(0, 3, 2), (1, 3, 0)]]
    base = tree_log_prob(params, as_batch(trees, lengths, 5))
    shuffled = [list(reversed(trees[0])), list(reversed(trees[1]))]
    assert torch.allclose(tree_log_prob(params, as_batch(shuffled, lengths, 5)), base)
    wider = as_batch(trees, lengths, 9)                 # more -1 padding than needed
    assert wider.spans.shape[1] == 8
    assert torch.allclose(tree_log_prob(params, wider), base)


def test_hand_computed_tree():
    """One tree with all four child cases, written out by hand."""
    NT, T = 2, 2
    lengths = torch.tensor([5])
    rule_logits, term_logits, root_logits = leaves(1, 5, NT, T, False, seed=4)
    params = make_params(rule_logits, term_logits, root_logits, lengths)
    R, E = params.rules[0], params.terms[0]
    t = [NT, NT + 1]
    # (0,5,A=1) -> (0,2,0) (2,5,1); (0,2,0) -> T T; (2,5,1) -> T (3,5,0); (3,5,0) -> T T
    tree = [(0, 5, 1), (0, 2, 0), (2, 5, 1), (3, 5, 0)]

    def lse(xs):
        return torch.stack(xs).logsumexp(0)

    expected = (params.roots[0, 1] + R[1, 0, 1]
                + lse([R[0, x, y] + E[0, x - NT] + E[1, y - NT] for x in t for y in t])
                + lse([R[1, x, 0] + E[2, x - NT] for x in t])
                + lse([R[0, x, y] + E[3, x - NT] + E[4, y - NT] for x in t for y in t]))
    got = tree_log_prob(params, as_batch([tree], lengths, 5))
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    # NT · T case: (0,3,0) -> (0,2,1) T
    tree2 = [(0, 3, 0), (0, 2, 1)]
    params3 = make_params(rule_logits, term_logits[:, :3], root_logits, torch.tensor([3]))
    E3 = params3.terms[0]
    expected2 = (params3.roots[0, 0] + lse([R[0, 1, y] + E3[2, y - NT] for y in t])
                 + lse([R[1, x, y] + E3[0, x - NT] + E3[1, y - NT] for x in t for y in t]))
    got2 = tree_log_prob(params3, as_batch([tree2], torch.tensor([3]), 3))
    assert got2.item() == pytest.approx(expected2.item(), rel=1e-12)


def test_one_word_sentence_has_no_tree():
    params = make_params(*leaves(2, 3, 2, 3, True, seed=0), torch.tensor([1, 3]))
    trees = as_batch([[], [(0, 3, 0), (1, 3, 1)]], [1, 3], 3)
    scores = tree_log_prob(params, trees)
    assert scores[0].item() == float("-inf") and torch.isfinite(scores[1])
