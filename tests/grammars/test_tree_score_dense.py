"""`tree_log_prob` in fixed shapes gives the scores, and gradients, of the version that picked
each rule case's nodes by `nonzero` and boolean masks (issue 14), without an op sized by the
data (each such op is a GPU wait).

The reference below is that version (commit 9d1fd6c), kept as the oracle and as the
baseline of `tests/benchmarks/bench_forest_terms.py` (case complete-tree).
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grammars.binary_trees import BinaryTrees
from grammars.charts.pcfg_params import PCFGParams, check_lengths, masked_terms, shared_rules
from grammars.charts.tree_score import tree_log_prob

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "benchmarks"))
from host_reads import DataWaits  # noqa: E402


def selected_tree_log_prob(params: PCFGParams, trees: BinaryTrees) -> torch.Tensor:
    """Each case's terms on its own nodes, picked by `nonzero` (the oracle)."""
    lengths = check_lengths(params)
    terms = masked_terms(params, lengths)
    B, n, T = terms.shape
    NT = params.num_nonterminals
    spans, labels = trees.spans, trees.labels
    Mx = spans.shape[1]
    shared = shared_rules(params.rules)
    live = torch.arange(Mx)[None, :] < (lengths - 1)[:, None]
    i = torch.where(live, spans[..., 0], 0)
    j = torch.where(live, spans[..., 1], 1)
    a = torch.where(live, labels, 0)
    inner = (i[:, :, None] == i[:, None, :]) & (j[:, None, :] < j[:, :, None]) & live[:, None, :]
    k = torch.where(inner, j[:, None, :], -1).amax(-1)
    k = torch.where(k < 0, i + 1, k)
    grid = torch.full((B, n, n + 1), -1, dtype=torch.long)
    brow = torch.arange(B)[:, None].expand(B, Mx)
    grid[brow[live], i[live], j[live]] = a[live]
    left_label, right_label = grid[brow, i, k], grid[brow, k, j]
    left_leaf, right_leaf = (k - i) == 1, (j - k) == 1

    def rule(bb, aa, x, y):
        return shared[aa, x, y] if shared is not None else params.rules[bb, aa, x, y]

    t = torch.arange(T) + NT
    node_score = terms.new_zeros(B, Mx)
    cases = (live & ~left_leaf & ~right_leaf, live & left_leaf & ~right_leaf,
             live & ~left_leaf & right_leaf, live & left_leaf & right_leaf)
    for case, mask in enumerate(cases):
        bb, mm = mask.nonzero(as_tuple=True)
        if bb.numel() == 0:
            continue
        ai, ii, kk, jj = a[bb, mm], i[bb, mm], k[bb, mm], j[bb, mm]
        if case == 0:
            s = rule(bb, ai, left_label[bb, mm], right_label[bb, mm])
        elif case == 1:
            s = (rule(bb[:, None], ai[:, None], t[None, :], right_label[bb, mm][:, None])
                 + terms[bb, ii]).logsumexp(-1)
        elif case == 2:
            s = (rule(bb[:, None], ai[:, None], left_label[bb, mm][:, None], t[None, :])
                 + terms[bb, kk]).logsumexp(-1)
        else:
            pair = rule(bb[:, None, None], ai[:, None, None], t[None, :, None], t[None, None, :])
            s = (pair + terms[bb, ii][:, :, None] + terms[bb, ii + 1][:, None, :]
                 ).flatten(1).logsumexp(-1)
        node_score = node_score.index_put((bb, mm), s)
    rows = torch.arange(B)
    root_label = grid[rows, 0, lengths].clamp(min=0)
    total = params.roots[rows, root_label] + node_score.sum(-1)
    return torch.where(lengths >= 2, total, torch.full_like(total, float("-inf")))


def random_trees(lengths: list[int], nt: int, extra: int, rng: random.Random) -> BinaryTrees:
    """Random complete labeled trees, nodes in random order in the first n - 1 slots of a
    row `extra` slots wider than the longest sentence needs; the other slots random junk."""
    M = max(max(lengths) - 1, 1) + extra
    spans = torch.tensor([[[rng.randrange(9), rng.randrange(9)] for _ in range(M)]
                          for _ in lengths])
    labels = torch.tensor([[rng.randrange(-1, nt) for _ in range(M)] for _ in lengths])
    for b, n in enumerate(lengths):
        roots, nodes = [(s, s + 1) for s in range(n)], []
        while len(roots) > 1:
            p = rng.randrange(len(roots) - 1)
            (s, _), (_, e) = roots[p], roots[p + 1]
            nodes.append((s, e))
            roots[p:p + 2] = [(s, e)]
        rng.shuffle(nodes)
        for m, (s, e) in enumerate(nodes):
            spans[b, m] = torch.tensor([s, e])
            labels[b, m] = rng.randrange(nt)
    return BinaryTrees(spans=spans, labels=labels, lengths=torch.tensor(lengths))


def random_inputs(lengths, nt: int, t: int, extra: int, shared: bool, dtype, seed: int):
    """(params, trees, the leaf tables that require grad)."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    B, n, S = len(lengths), max(lengths), nt + t
    roots = (torch.randn(B, nt, generator=gen, dtype=dtype) * 2).log_softmax(-1)
    rules = (torch.randn(1 if shared else B, nt, S * S, generator=gen, dtype=dtype) * 2
             ).log_softmax(-1).view(-1, nt, S, S)
    terms = (torch.randn(B, n, t, generator=gen, dtype=dtype) * 2).log_softmax(-1)
    tables = [x.requires_grad_() for x in (roots, rules, terms)]
    params = PCFGParams(roots, rules.expand(B, nt, S, S), terms, torch.tensor(lengths))
    return params, random_trees(lengths, nt, extra, rng), tables


def _grads(scores, tables):
    weights = torch.linspace(0.5, 1.5, scores.numel(), dtype=scores.dtype)
    kept = torch.isfinite(scores)
    return torch.autograd.grad(torch.where(kept, scores * weights, 0).sum(), tables,
                               allow_unused=True)


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), extra=st.integers(0, 3),
       shared=st.booleans(), double=st.booleans(), seed=st.integers(0, 10 ** 6))
def test_dense_scores_equal_the_selected_ones_with_their_gradients(
        lengths, extra, shared, double, seed):
    dtype = torch.float64 if double else torch.float32
    params, trees, tables = random_inputs(lengths, 3, 4, extra, shared, dtype, seed)
    got = tree_log_prob(params, trees)
    if max(lengths) == 1:                 # the oracle's grid had no row for a dead slot's child
        assert torch.equal(got, torch.full_like(got, float("-inf")))
        return
    want = selected_tree_log_prob(params, trees)
    assert torch.equal(got, want)
    for table, g, r in zip(tables, _grads(got, tables), _grads(want, tables)):
        unused = torch.zeros_like(table)
        torch.testing.assert_close(unused if g is None else g, unused if r is None else r,
                                   rtol=0, atol=1e-6)


def test_impossible_rules_that_only_other_cases_read_leak_no_nan_into_the_gradients():
    """Every node reads every case's entries: -inf rules with one preterminal and one
    nonterminal child, which no node of ((w0 w1) (w2 w3)) uses, must leave scores and
    gradients as the selection's."""
    params, _, tables = random_inputs([4], 2, 3, 0, True, torch.float64, 0)
    rules = tables[1].detach().clone()
    rules[:, :, 2:, :2] = rules[:, :, :2, 2:] = float("-inf")
    rules.requires_grad_()
    params = PCFGParams(params.roots, rules.expand(1, -1, -1, -1), params.terms, params.lengths)
    trees = BinaryTrees(spans=torch.tensor([[[2, 4], [0, 4], [0, 2]]]),
                        labels=torch.tensor([[0, 1, 0]]), lengths=torch.tensor([4]))
    got = tree_log_prob(params, trees)
    assert torch.equal(got, selected_tree_log_prob(params, trees)) and got.isfinite().all()
    for grad in torch.autograd.grad(got.sum(), (tables[0], rules, tables[2])):
        assert not grad.isnan().any()


def test_scoring_and_its_backward_make_no_op_sized_by_the_data_and_watching_changes_nothing():
    repo = Path(__file__).resolve().parents[2]
    for shared in (True, False):
        params, trees, tables = random_inputs([7, 3, 9, 5, 1], 3, 4, 1, shared,
                                              torch.float32, 1)
        plain = tree_log_prob(params, trees)
        plain_grads = _grads(plain, tables)
        watch = DataWaits(repo)
        with watch:
            watched = tree_log_prob(params, trees)
            watched_grads = _grads(watched, tables)
        assert not watch.sites, watch.sites
        for x, y in zip((plain, *plain_grads), (watched, *watched_grads)):
            assert torch.equal(x, y)
    with watch:                                    # and the watcher does see the old way
        selected_tree_log_prob(params, trees)
    assert {kind for *_, kind in watch.sites} >= {"nonzero", "index[bool]"}
