"""Viterbi (against torch-struct and its own tree), MBR (against brute force over all binary
trees) and exact posterior sampling (against inside-outside marginals and exact tree
probabilities, with binomial tolerances)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from grammars.charts import inside
from grammars.charts import inside_torch_struct as ts
from grammars.binary_trees import BinaryTrees
from grammars.charts.mbr import mbr_decode
from grammars.charts.viterbi import viterbi
from grammars.charts.pcfg_params import PCFGParams
from grammars.charts.posterior_sampling import sample_posterior
from grammars.charts.tree_score import tree_log_prob

pytestmark = pytest.mark.filterwarnings("ignore:.*arg_constraints")
F64 = torch.float64


def random_params(lengths, NT=3, T=4, shared=False, seed=0, scale=1.0) -> PCFGParams:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    B, n, S = len(lengths), int(lengths.max()), NT + T
    rules = (torch.randn(1 if shared else B, NT, S * S, generator=g, dtype=F64) * scale
             ).log_softmax(-1).view(-1, NT, S, S).expand(B, NT, S, S)
    return PCFGParams(roots=torch.randn(B, NT, generator=g, dtype=F64).log_softmax(-1),
                      rules=rules,
                      terms=(torch.randn(B, n, T, generator=g, dtype=F64) * scale).log_softmax(-1),
                      lengths=lengths)


def binary_trees(i: int, j: int):
    """Every binary bracketing of [i, j) as a list of its internal spans."""
    if j - i == 1:
        yield []
        return
    for k in range(i + 1, j):
        for left in binary_trees(i, k):
            for right in binary_trees(k, j):
                yield [(i, j)] + left + right


def assert_valid(trees: BinaryTrees):
    """Each row is a binary tree over its sentence: n - 1 distinct, nested, binary spans."""
    for nodes, n in zip(trees.span_lists(), trees.lengths.tolist()):
        assert len(nodes) == max(n - 1, 0) and len(set(nodes)) == len(nodes)
        if n < 2:
            continue
        assert (0, n) in nodes
        spans = set(nodes) | {(p, p + 1) for p in range(n)}
        for i, j in nodes:
            assert 0 <= i < j <= n and j - i >= 2
            assert sum((i, k) in spans and (k, j) in spans for k in range(i + 1, j)) == 1


# --- Viterbi ----------------------------------------------------------------------------

def joint_score(params: PCFGParams, b: int, nodes, pre) -> float:
    """log p(tree, preterminals, words) of sentence b, read directly off the rule tables."""
    NT, n = params.num_nonterminals, int(params.lengths[b])
    label = {(i, j): a for i, j, a in nodes}
    symbol = lambda i, j: label[(i, j)] if j - i > 1 else NT + pre[i]           # noqa: E731
    total = params.roots[b, label[(0, n)]].item()
    total += sum(params.terms[b, p, pre[p]].item() for p in range(n))
    for (i, j), a in label.items():
        k = next(k for k in range(i + 1, j)
                 if (k - i == 1 or (i, k) in label) and (j - k == 1 or (k, j) in label))
        total += params.rules[b, a, symbol(i, k), symbol(k, j)].item()
    return total


@pytest.mark.parametrize("lengths,shared", [([7, 2, 5, 3], False), ([6, 6, 4], True),
                                            ([9, 1, 3], False)])
def test_viterbi_matches_torch_struct(lengths, shared):
    """Same best score as `SentCFG.max`, attained by our tree. (The trees may differ: rotations
    reusing one multiset of rules over the same preterminals tie exactly.)"""
    params = random_params(lengths, shared=shared, seed=len(lengths))
    ours, trees = viterbi(params)
    ref, _ = ts.viterbi(params)
    live = params.lengths >= 2
    assert ((ours[live] - ref[live]).abs() / ref[live].abs()).max().item() < 1e-5
    assert torch.isinf(ours[~live]).all()
    assert_valid(trees)
    for b in live.nonzero().flatten().tolist():
        value = joint_score(params, b, trees.labeled_lists()[b], trees.preterminals[b].tolist())
        assert value == pytest.approx(ref[b].item(), rel=1e-9)
    single = (params.lengths == 1).nonzero().flatten()
    assert (trees.preterminals[single, 0] == params.terms[single, 0].argmax(-1)).all()


def test_viterbi_tree_matches_torch_struct_when_untied():
    """Strongly varied parameters make ties unlikely: then the trees coincide as well."""
    params = random_params([6, 5, 7], NT=4, T=5, seed=21, scale=3.0)
    _, trees = viterbi(params)
    _, ref_trees = ts.viterbi(params)
    assert [sorted(t) for t in trees.labeled_lists()] == \
        [sorted(t) for t in ref_trees.labeled_lists()]
    assert torch.equal(trees.preterminals, ref_trees.preterminals)


def test_viterbi_score_is_the_brute_force_maximum():
    """Max over every labeled tree and preterminal sequence of a 4-word sentence."""
    params = random_params([4], NT=2, T=2, seed=5, scale=2.0)
    best = -math.inf
    for shape in binary_trees(0, 4):
        for labels in itertools.product(range(2), repeat=3):
            nodes = [(i, j, a) for (i, j), a in zip(shape, labels)]
            for pre in itertools.product(range(2), repeat=4):
                best = max(best, joint_score(params, 0, nodes, pre))
    score, trees = viterbi(params)
    assert score.item() == pytest.approx(best, rel=1e-12)
    assert joint_score(params, 0, trees.labeled_lists()[0],
                       trees.preterminals[0].tolist()) == pytest.approx(best, rel=1e-12)


# --- MBR --------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_mbr_maximizes_expected_correct_spans(n):
    g = torch.Generator().manual_seed(n)
    scores = torch.rand(3, n, n + 1, generator=g, dtype=F64)
    trees = mbr_decode(scores, torch.full((3,), n))
    assert_valid(trees)
    for b, nodes in enumerate(trees.span_lists()):
        value = lambda t: sum(scores[b, i, j].item() for i, j in t)          # noqa: E731
        best = max(value(t) for t in binary_trees(0, n))
        assert value(nodes) == pytest.approx(best, abs=1e-12)


def test_mbr_on_inside_marginals_with_mixed_lengths_and_labels():
    params = random_params([6, 2, 5, 1], seed=8)
    marg = inside.span_marginals(params)
    trees = mbr_decode(marg, params.lengths)
    assert_valid(trees)
    for b, (nodes, n) in enumerate(zip(trees.span_lists(), params.lengths.tolist())):
        if n >= 2:
            value = lambda t: sum(marg[b, i, j].item() for i, j in t)         # noqa: E731
            assert value(nodes) == pytest.approx(max(value(t) for t in binary_trees(0, n)))
    labeled = inside.span_marginals(params, labeled=True)
    lab_trees = mbr_decode(labeled, params.lengths)
    assert lab_trees.span_lists() == trees.span_lists()
    for b, nodes in enumerate(lab_trees.labeled_lists()):
        for i, j, a in nodes:
            assert a == int(labeled[b, i, j].argmax())
    assert set(a for t in trees.labeled_lists() for _, _, a in t) <= {0}


# --- exact posterior sampling -----------------------------------------------------------

def test_samples_match_span_marginals():
    """20k samples: every span's frequency within 5 binomial standard deviations."""
    params = random_params([6, 4], NT=3, T=4, seed=12)
    N = 20_000
    trees = sample_posterior(params, N, generator=torch.Generator().manual_seed(1))
    assert len(trees) == 2 * N
    assert_valid(BinaryTrees(trees.spans[::997], trees.labels[::997], trees.lengths[::997]))
    marg = inside.span_marginals(params)
    lab = inside.span_marginals(params, labeled=True)
    for b in range(2):
        rows = slice(b * N, (b + 1) * N)
        assert (trees.lengths[rows] == params.lengths[b]).all()
        sp, lb = trees.spans[rows], trees.labels[rows]
        n = params.max_length
        counts = torch.zeros(n, n + 1, dtype=F64)
        lab_counts = torch.zeros(n, n + 1, params.num_nonterminals, dtype=F64)
        ok = sp[..., 0] >= 0
        counts.index_put_((sp[ok][:, 0], sp[ok][:, 1]), torch.ones(int(ok.sum()), dtype=F64),
                          accumulate=True)
        lab_counts.index_put_((sp[ok][:, 0], sp[ok][:, 1], lb[ok]),
                              torch.ones(int(ok.sum()), dtype=F64), accumulate=True)
        for freq, p in ((counts / N, marg[b]), (lab_counts / N, lab[b])):
            p = p.clone()
            if p.dim() == 2:
                idx = torch.arange(n)
                p[idx, idx + 1] = 0                      # leaves are never listed as nodes
            sigma = (p * (1 - p) / N).sqrt()
            assert ((freq - p).abs() <= 5 * sigma + 1e-9).all(), (freq - p).abs().max()


def test_samples_follow_the_exact_tree_posterior():
    """On a sentence small enough to list every labeled tree, each tree's frequency matches
    exp(tree_log_prob - log Z) within 5 binomial standard deviations."""
    params = random_params([4], NT=2, T=3, seed=3, scale=1.5)
    N = 20_000
    draws = sample_posterior(params, N, generator=torch.Generator().manual_seed(2))
    freq = {}
    for nodes in draws.labeled_lists():
        key = tuple(sorted(nodes))
        freq[key] = freq.get(key, 0) + 1
    log_z = inside.log_partition(params).item()
    total = 0.0
    for shape in binary_trees(0, 4):
        for labels in itertools.product(range(2), repeat=3):
            nodes = sorted((i, j, a) for (i, j), a in zip(shape, labels))
            tree = BinaryTrees(torch.tensor([[[i, j] for i, j, _ in nodes]]),
                               torch.tensor([[a for _, _, a in nodes]]), torch.tensor([4]))
            p = math.exp(tree_log_prob(params, tree).item() - log_z)
            total += p
            observed = freq.get(tuple(nodes), 0) / N
            assert abs(observed - p) <= 5 * math.sqrt(p * (1 - p) / N) + 1e-9
    assert total == pytest.approx(1.0)


def test_sampling_is_vectorized_over_a_mixed_batch():
    params = random_params([7, 1, 3, 2, 5], seed=6)
    trees = sample_posterior(params, 4, generator=torch.Generator().manual_seed(0))
    assert trees.spans.shape == (20, 6, 2)
    assert trees.lengths.tolist() == [7] * 4 + [1] * 4 + [3] * 4 + [2] * 4 + [5] * 4
    assert_valid(trees)
    assert (trees.labels[4:8] == -1).all()
    assert trees.preterminals is None
