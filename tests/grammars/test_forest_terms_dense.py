"""`forest_node_terms` in fixed shapes gives the terms, and gradients, of the version that
selected the nodes of each rule kind by `nonzero` and boolean masks (issue 14), without an
op sized by the data (each such op is a GPU wait).

The reference below is that version (commit 9d1fd6c), kept as the oracle and as the
baseline of `tests/benchmarks/bench_forest_terms.py`.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grammars.binary_trees import BinaryTrees
from grammars.models.forest_score import ForestStructure, forest_node_terms, forest_structure

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "benchmarks"))
from host_reads import DataWaits  # noqa: E402


def selected_node_terms(structure: ForestStructure, labels, words, roots, rules, emissions,
                        group, parent_conditioned: bool):
    """The node terms of each rule kind on its own nodes, picked by `nonzero` (the oracle)."""
    B, M = labels.shape
    G, C, NT, S, _ = rules.shape
    present = structure.present
    node_terms = torch.zeros(B, M, dtype=rules.dtype)
    bi, mi = present.nonzero(as_tuple=True)
    A, g, par = labels[bi, mi], group[bi], structure.parent[bi, mi]
    if parent_conditioned:
        ctx = torch.where(par >= 0, labels[bi, par.clamp(min=0)], torch.full_like(A, NT))
        ectx = A
    else:
        ctx = ectx = torch.zeros_like(A)
    lnode, rnode = structure.left[bi, mi], structure.right[bi, mi]
    lsym = torch.where(lnode >= 0, labels[bi, lnode.clamp(min=0)], torch.full_like(A, -1))
    rsym = torch.where(rnode >= 0, labels[bi, rnode.clamp(min=0)], torch.full_like(A, -1))
    lword, rword = words[bi, structure.start[bi, mi]], words[bi, structure.end[bi, mi] - 1]
    table = rules.reshape(G * C * NT, S, S)
    row = (g * C + ctx) * NT + A

    def emit(word, sel):
        return emissions[g[sel], ectx[sel], :, word[sel]]

    l_leaf, r_leaf = lsym < 0, rsym < 0
    values, where = [], []
    sel = ~l_leaf & ~r_leaf
    values.append(table[row[sel], lsym[sel], rsym[sel]])
    where.append(sel.nonzero(as_tuple=True)[0])
    sel = l_leaf & ~r_leaf
    values.append(torch.logsumexp(table[row[sel], NT:, rsym[sel]] + emit(lword, sel), dim=1))
    where.append(sel.nonzero(as_tuple=True)[0])
    sel = ~l_leaf & r_leaf
    values.append(torch.logsumexp(table[row[sel], lsym[sel], NT:] + emit(rword, sel), dim=1))
    where.append(sel.nonzero(as_tuple=True)[0])
    sel = l_leaf & r_leaf
    scores = (table[:, NT:, NT:][row[sel]] + emit(lword, sel)[:, :, None]
              + emit(rword, sel)[:, None, :])
    values.append(torch.logsumexp(scores.flatten(1), dim=1))
    where.append(sel.nonzero(as_tuple=True)[0])
    per_node = torch.zeros(bi.shape[0], dtype=rules.dtype).index_put(
        (torch.cat(where),), torch.cat(values))
    return node_terms.index_put((bi, mi), per_node)


def random_forests(lengths: list[int], nt: int, keep: float, rng: random.Random
                   ) -> BinaryTrees:
    """Bottom-up partial forests: a prefix (a `keep` share) of each random tree's merges, in
    random slots of the row, the other slots -1."""
    M = max(max(lengths) - 1, 1)
    spans = torch.full((len(lengths), M, 2), -1, dtype=torch.long)
    labels = torch.full((len(lengths), M), -1, dtype=torch.long)
    for b, n in enumerate(lengths):
        roots, nodes = [(i, i + 1) for i in range(n)], []
        while len(roots) > 1:
            p = rng.randrange(len(roots) - 1)
            (i, _), (_, j) = roots[p], roots[p + 1]
            nodes.append((i, j))
            roots[p:p + 2] = [(i, j)]
        nodes = nodes[:round(keep * len(nodes))]
        for slot, (i, j) in zip(rng.sample(range(M), len(nodes)), nodes):
            spans[b, slot] = torch.tensor([i, j])
            labels[b, slot] = rng.randrange(nt)
    return BinaryTrees(spans=spans, labels=labels, lengths=torch.tensor(lengths))


def random_inputs(lengths, nt: int, t: int, v: int, keep: float, parent_conditioned: bool,
                  per_sentence: bool, dtype, seed: int):
    """(trees, the scorer's arguments with grammar tables that require grad)."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    trees = random_forests(lengths, nt, keep, rng)
    B, G = len(lengths), (len(lengths) if per_sentence else 1)
    C, CE = (nt + 1, nt) if parent_conditioned else (1, 1)
    S = nt + t

    def log_probs(*shape, over: int):
        x = torch.randn(*shape, generator=gen, dtype=dtype) * 2
        return x.flatten(-over).log_softmax(-1).view(shape).requires_grad_()
    roots = log_probs(G, nt, over=1)
    rules = log_probs(G, C, nt, S, S, over=2)
    emissions = log_probs(G, CE, t, v, over=1)
    words = torch.randint(v, (B, max(lengths)), generator=gen)
    group = torch.arange(B) if per_sentence else torch.zeros(B, dtype=torch.long)
    return trees, (forest_structure(trees), trees.labels, words, roots, rules, emissions, group)


def _grads(terms, tables):
    weights = torch.linspace(0.5, 1.5, terms.numel(), dtype=terms.dtype).view_as(terms)
    return torch.autograd.grad((terms * weights).sum(), tables, allow_unused=True)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), keep=st.floats(0, 1),
       parent_conditioned=st.booleans(), per_sentence=st.booleans(),
       double=st.booleans(), seed=st.integers(0, 10 ** 6))
def test_dense_terms_equal_the_selected_ones_with_their_gradients(
        lengths, keep, parent_conditioned, per_sentence, double, seed):
    dtype = torch.float64 if double else torch.float32
    _, args = random_inputs(lengths, 3, 4, 6, keep, parent_conditioned, per_sentence, dtype,
                            seed)
    terms, determined, _ = forest_node_terms(*args, parent_conditioned)
    want = selected_node_terms(*args, parent_conditioned)
    assert torch.equal(terms, want)
    assert not (terms != 0).logical_and(~args[0].present).any()
    tables = args[3:6]
    for table, got, ref in zip(tables, _grads(terms, tables), _grads(want, tables)):
        unused = torch.zeros_like(table)          # a table no term reads has no gradient
        torch.testing.assert_close(unused if got is None else got,
                                   unused if ref is None else ref, rtol=0, atol=1e-6)


def test_an_impossible_entry_that_only_empty_slots_read_leaks_no_nan_into_the_gradients():
    """Every slot reads every kind's entries, an empty one word 0 of its row: a -inf
    emission of a word no node uses must leave terms and gradients as the selection's."""
    trees = BinaryTrees(spans=torch.tensor([[[1, 3], [-1, -1], [3, 5], [-1, -1], [1, 5]]]),
                        labels=torch.tensor([[0, -1, 1, -1, 2]]), lengths=torch.tensor([6]))
    _, args = random_inputs([6], 3, 4, 6, 1.0, False, False, torch.float64, 0)
    emissions = args[5].detach().clone()
    emissions[..., 3] = float("-inf")
    emissions.requires_grad_()
    words = torch.tensor([[3, 0, 1, 2, 1, 0]])
    args = (forest_structure(trees), trees.labels, words, args[3], args[4], emissions,
            args[6])
    terms, _, _ = forest_node_terms(*args, False)
    assert torch.equal(terms, selected_node_terms(*args, False))
    assert torch.isfinite(terms).all()
    for grad in torch.autograd.grad(terms.sum(), (args[4], emissions)):
        assert not grad.isnan().any()


def test_scoring_and_its_backward_make_no_op_sized_by_the_data_and_watching_changes_nothing():
    repo = Path(__file__).resolve().parents[2]
    _, args = random_inputs([7, 3, 9, 5], 3, 4, 6, 0.6, True, False, torch.float32, 1)
    plain = forest_node_terms(*args, True)
    plain_grads = _grads(plain[0], args[4:6])
    watch = DataWaits(repo)
    with watch:
        watched = forest_node_terms(*args, True)
        watched_grads = _grads(watched[0], args[4:6])
    assert not watch.sites, watch.sites
    for a, b in zip((*plain, *plain_grads), (*watched, *watched_grads)):
        assert torch.equal(a, b)
    with watch:                                    # and the watcher does see the old way
        selected_node_terms(*args, True)
    assert {kind for *_, kind in watch.sites} >= {"nonzero", "index[bool]"}


def test_more_two_word_nodes_than_a_row_can_hold_is_refused():
    """The T x T blocks are read for n // 2 slots a row; overlapping two-word spans (which
    the structure check lets through) exceeding that are an error, not silently dropped."""
    trees = BinaryTrees(spans=torch.tensor([[[0, 2], [1, 3]]]), labels=torch.tensor([[0, 1]]),
                        lengths=torch.tensor([3]))
    _, args = random_inputs([3], 3, 4, 6, 1.0, False, False, torch.float64, 0)
    with pytest.raises(ValueError, match="overlap"):
        forest_node_terms(forest_structure(trees), trees.labels, *args[2:], False)
