"""The non-context-free grammar: its tree score against slow references and exact sums.

Tiny grammars (2 nonterminals, 2-3 preterminals, 2-3 words) make every labeled tree and
sentence of length <= 4 enumerable. The references here are recursive, per-tree Python and
share no code with `forest_score`; the totals check normalization of the whole generative
process (rules, root and emissions), not only the scorer.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
import torch

from grammars.binary_trees import BinaryTrees
from grammars.models import build_grammar

NT, T, V = 2, 3, 2


@pytest.fixture(scope="module")
def model():
    m = build_grammar("ncfg", V, seed=3, nonterminals=NT, preterminals=T, symbol_dim=8).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():                      # sharpen: make context dependence pronounced
        for lin in (m.root_out, m.rule_out, m.term_out):
            if lin is not m.root_out:
                lin.weight.mul_(4)
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen, dtype=torch.float64))
    return m


@pytest.fixture(scope="module")
def tables(model):
    with torch.no_grad():
        return tuple(t.double() for t in model.tables())


# ------------------------------------------------------------------ trees and references
def shapes(i: int, j: int):
    """Every binary bracketing of [i, j) as a nested (i, j, left, right) / leaf int."""
    if j - i == 1:
        return [i]
    out = []
    for k in range(i + 1, j):
        for left in shapes(i, k):
            for right in shapes(k, j):
                out.append((i, j, left, right))
    return out


def internal_spans(shape) -> list[tuple[int, int]]:
    if isinstance(shape, int):
        return []
    i, j, left, right = shape
    return [(i, j)] + internal_spans(left) + internal_spans(right)


def batch(trees: list[list[tuple[int, int, int]]], lengths: list[int]) -> BinaryTrees:
    M = max(max(lengths) - 1, 1)
    spans = torch.full((len(trees), M, 2), -1, dtype=torch.long)
    labels = torch.full((len(trees), M), -1, dtype=torch.long)
    for b, nodes in enumerate(trees):
        for m, (i, j, a) in enumerate(nodes):
            spans[b, m] = torch.tensor([i, j])
            labels[b, m] = a
    return BinaryTrees(spans, labels, torch.tensor(lengths))


def id_batch(sentences: list[list[int]], pad: int = 0) -> torch.Tensor:
    n = max(len(s) for s in sentences)
    return torch.tensor([s + [pad] * (n - len(s)) for s in sentences])


def slow_subtree(tables, words, label, i, j, parent, inside_children=True) -> float:
    """log p(subtree over [i, j) | parent of its root) by recursion over the tree.

    With inside_children=False only the root's own term (children as mere labels)."""
    _, rules, emis = tables
    A = label[(i, j)]
    k = max(e for (s, e) in label if s == i and e < j) if any(
        s == i and e < j for (s, e) in label) else i + 1

    def options(s, e, w):
        if e - s == 1:
            return [(NT + t, float(emis[A, t, w])) for t in range(T)]
        sub = slow_subtree(tables, words, label, s, e, A) if inside_children else 0.0
        return [(label[(s, e)], sub)]

    total = [float(rules[parent, A, b, c]) + lw + rw
             for b, lw in options(i, k, words[i]) for c, rw in options(k, j, words[j - 1])]
    return float(torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0))


def slow_log_joint(tables, words, nodes) -> float:
    label = {(i, j): a for i, j, a in nodes}
    n = len(words)
    return float(tables[0][label[(0, n)]]) + slow_subtree(tables, words, label, 0, n, NT)


def random_trajectory(n: int, rng: random.Random):
    """Bottom-up random merges: the list of node lists after each step (the last is complete)."""
    roots = [(i, i + 1) for i in range(n)]
    nodes, states = [], []
    while len(roots) > 1:
        p = rng.randrange(len(roots) - 1)
        (i, _), (_, j) = roots[p], roots[p + 1]
        nodes = nodes + [(i, j, rng.randrange(NT))]
        roots[p:p + 2] = [(i, j)]
        states.append(list(nodes))
    return states


def length_probability(tables, n_max: int) -> torch.Tensor:
    """P(|x| = n) for n <= n_max by a DP over yields only (words sum to 1 per preterminal)."""
    roots, rules, _ = tables
    beta = torch.zeros(NT + 1, NT, n_max + 1, dtype=torch.float64)   # beta[P, A, m]
    P = rules.exp()
    for m in range(2, n_max + 1):
        for k in range(1, m):
            def y(size):                                             # (NT_parent=A, S) yields
                out = torch.zeros(NT, NT + T, dtype=torch.float64)
                if size == 1:
                    out[:, NT:] = 1.0
                else:
                    out[:, :NT] = beta[:NT, :, size]
                return out
            yl, yr = y(k), y(m - k)                                  # indexed by [A, child]
            beta[:, :, m] += torch.einsum("pabc,ab,ac->pa", P, yl, yr)
    return torch.einsum("a,an->n", roots.exp(), beta[NT])


def shape_probability(tables, shape) -> float:
    """Probability that top-down generation produces this unlabeled shape."""
    roots, rules, _ = tables
    P = rules.exp()

    def node(shape) -> torch.Tensor:                                 # (NT+1 parent, NT) prob
        _, _, left, right = shape

        def child(sub):                                              # (A, S): weight of child X
            out = torch.zeros(NT, NT + T, dtype=torch.float64)
            if isinstance(sub, int):
                out[:, NT:] = 1.0
            else:
                out[:, :NT] = node(sub)[:NT]
            return out
        return torch.einsum("pabc,ab,ac->pa", P, child(left), child(right))
    return float(roots.exp() @ node(shape)[NT])


# ------------------------------------------------------------------ tests
def test_tables_are_normalized(tables):
    roots, rules, emis = tables
    assert rules.shape == (NT + 1, NT, NT + T, NT + T) and emis.shape == (NT, T, V)
    torch.testing.assert_close(roots.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(rules.exp().sum((2, 3)), torch.ones(NT + 1, NT, dtype=torch.float64))
    torch.testing.assert_close(emis.exp().sum(2), torch.ones(NT, T, dtype=torch.float64))
    # the parent matters (else this would be a PCFG)
    assert (rules[0] - rules[1]).abs().max() > 0.5 and (emis[0] - emis[1]).abs().max() > 0.5


def test_log_joint_matches_slow_reference_on_random_trees(model, tables):
    rng = random.Random(0)
    sentences, trees = [], []
    for _ in range(40):
        n = rng.randint(2, 7)
        sentences.append([rng.randrange(V) for _ in range(n)])
        nodes = random_trajectory(n, rng)[-1]
        rng.shuffle(nodes)                                           # node order is free
        trees.append(nodes)
    lengths = [len(s) for s in sentences]
    with torch.no_grad():
        got = model.log_joint(id_batch(sentences, pad=-1), torch.tensor(lengths),
                              batch(trees, lengths))
    want = torch.tensor([slow_log_joint(tables, s, t) for s, t in zip(sentences, trees)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_sum_over_sentences_and_trees_is_length_probability(model, tables, n):
    """Σ_x Σ_z p(x, z) over |x| = n equals P(|x| = n) of top-down generation; and per shape,
    Σ over labels and words equals the probability of generating that shape."""
    sentences, trees, shape_of = [], [], []
    all_shapes = shapes(0, n)
    for s_idx, shape in enumerate(all_shapes):
        spans = internal_spans(shape)
        for labels in itertools.product(range(NT), repeat=n - 1):
            for words in itertools.product(range(V), repeat=n):
                sentences.append(list(words))
                trees.append([(i, j, a) for (i, j), a in zip(spans, labels)])
                shape_of.append(s_idx)
    lengths = [n] * len(sentences)
    with torch.no_grad():
        lp = model.log_joint(id_batch(sentences), torch.tensor(lengths), batch(trees, lengths))
    total = lp.exp().sum()
    torch.testing.assert_close(total, length_probability(tables, n)[n], rtol=1e-10, atol=0)
    per_shape = torch.zeros(len(all_shapes), dtype=torch.float64).index_add(
        0, torch.tensor(shape_of), lp.exp())
    want = torch.tensor([shape_probability(tables, s) for s in all_shapes], dtype=torch.float64)
    torch.testing.assert_close(per_shape, want, rtol=1e-10, atol=0)


def test_partial_terms_along_trajectories(model, tables):
    """Each partial score = Σ over forest roots of their subtrees' terms except the root's own
    (its parent is unknown); at completion it equals log_joint."""
    rng = random.Random(1)
    sentences, states, expected = [], [], []
    for _ in range(12):
        n = rng.randint(2, 6)
        words = [rng.randrange(V) for _ in range(n)]
        for nodes in random_trajectory(n, rng):
            label = {(i, j): a for i, j, a in nodes}
            covered = {(i, j) for i, j, _ in nodes}
            tops = [(i, j) for (i, j) in covered
                    if not any(s <= i and j <= e and (s, e) != (i, j) for s, e in covered)]
            if tops == [(0, n)]:
                want = slow_log_joint(tables, words, nodes)
            else:
                want = sum(slow_subtree(tables, words, label, i, j, 0)
                           - slow_subtree(tables, words, label, i, j, 0, inside_children=False)
                           for i, j in tops)
            sentences.append(words); states.append(nodes); expected.append(want)
    lengths = [len(s) for s in sentences]
    ids, trees = id_batch(sentences), batch(states, lengths)
    with torch.no_grad():
        got = model.partial_log_joint(ids, torch.tensor(lengths), trees)
        terms, determined, root_term = model.node_terms(ids, torch.tensor(lengths), trees)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close((terms * determined).sum(1) + root_term, got)
    # padding rows may sit anywhere: move every node to the end of its row
    shifted = BinaryTrees(trees.spans.roll(3, dims=1), trees.labels.roll(3, dims=1), trees.lengths)
    with torch.no_grad():
        moved = model.partial_log_joint(ids, torch.tensor(lengths), shifted)
    torch.testing.assert_close(moved, got)
    with torch.no_grad():
        # tables computed once and reused give the same scores
        reused = model.partial_log_joint(ids, torch.tensor(lengths), trees, tables=model.tables())
    torch.testing.assert_close(reused, got)


def test_log_joint_gradient_reaches_every_table(model):
    ids = torch.tensor([[0, 1, 1, 0]])
    trees = batch([[(0, 4, 1), (0, 2, 0), (2, 4, 1)]], [4])
    model.zero_grad()
    model.log_joint(ids, torch.tensor([4]), trees).sum().backward()
    for name in ("root_out", "rule_out", "term_out"):
        assert getattr(model, name).weight.grad.abs().sum() > 0, name
    assert model.parent_embedding.grad[NT].abs().sum() > 0            # ROOT context used
    model.zero_grad()


def test_top_down_samples_follow_the_joint(model, tables):
    """Empirical frequencies of sampled sentences of length 2-3 match Σ_z p(x, z) / P(|x|<=L)."""
    L, N = 4, 20000
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids, trees, pre = model.sample(N, L, gen)
    lengths = trees.lengths
    assert len(ids) == N and int(lengths.max()) <= L and int(lengths.min()) >= 2
    # samples are valid trees: scorable and finite
    with torch.no_grad():
        lp = model.log_joint(id_batch(ids), lengths, trees)
    assert torch.isfinite(lp).all()
    assert ((pre >= 0).sum(1) == lengths).all()
    counts = Counter(tuple(s) for s in ids)
    p_len = length_probability(tables, L)
    norm = float(p_len[2:].sum())
    for n in (2, 3):
        sents, trs = [], []
        for words in itertools.product(range(V), repeat=n):
            for shape in shapes(0, n):
                for labels in itertools.product(range(NT), repeat=n - 1):
                    sents.append(list(words))
                    trs.append([(i, j, a) for (i, j), a in zip(internal_spans(shape), labels)])
        with torch.no_grad():
            lj = model.log_joint(id_batch(sents), torch.tensor([n] * len(sents)),
                                 batch(trs, [n] * len(sents)))
        per = len(trs) // V ** n
        px = lj.exp().view(V ** n, per).sum(1) / norm
        for words, p in zip(itertools.product(range(V), repeat=n), px.tolist()):
            freq = counts[words] / N
            assert abs(freq - p) < 5 * (p * (1 - p) / N) ** 0.5 + 1e-3, (words, freq, p)


def test_partial_forest_must_be_bottom_up(model):
    # a root without its children is not a bottom-up partial forest
    ids = torch.tensor([[0, 1, 1]])
    with pytest.raises(ValueError, match="bottom-up"):
        model.partial_log_joint(ids, torch.tensor([3]), batch([[(0, 3, 0)]], [3]))


def test_one_word_sentences_are_impossible(model):
    """No CNF derivation yields one word: log p = -inf, as the inside algorithm says."""
    trees = BinaryTrees(torch.full((2, 1, 2), -1), torch.full((2, 1), -1), torch.tensor([1, 2]))
    trees.spans[1, 0] = torch.tensor([0, 2])
    trees.labels[1, 0] = 1
    with torch.no_grad():
        lp = model.log_joint(torch.tensor([[1, 0], [0, 1]]), torch.tensor([1, 2]), trees)
    assert lp[0] == float("-inf") and torch.isfinite(lp[1])


def test_log_marginal_is_refused(model):
    with pytest.raises(NotImplementedError, match="importance sampling"):
        model.log_marginal(torch.tensor([[0, 1]]), torch.tensor([2]), None)
