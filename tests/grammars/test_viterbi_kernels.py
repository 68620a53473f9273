"""Viterbi's max-plus kernels (issue 17): the blocked running-max contraction against the
materialized candidate tensor it replaced (bit for bit), and the decoder against a brute-force
maximum over every labeled tree and preterminal sequence, with mixed lengths, shared and
per-sentence grammars, and the stacked splits of every width path (k = 1, NT·NT, k = w-1)."""
from __future__ import annotations

import itertools

import pytest
import torch

from grammars.charts import viterbi as viterbi_module
from grammars.charts.semirings import max_plus, max_plus_contract, max_plus_qfirst
from grammars.charts.viterbi import viterbi
from test_decoding import random_params as decoding_params
from tree_enumeration import all_trees



def materialized(vecs, mats):
    return (vecs[..., :, None] + mats).amax(-2)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 18])
@pytest.mark.parametrize("vshape,mshape", [((3, 5, 4), (1, 1, 4, 6)),        # shared mats
                                           ((2, 4, 3, 5), (2, 4, 3, 5, 5)),  # per-row mats
                                           ((2, 1, 1), (2, 6, 1, 3))])       # broadcast rows
def test_contract_is_bitwise_the_materialized_maximum(vshape, mshape, chunk):
    g = torch.Generator().manual_seed(len(vshape) + chunk)
    vecs, mats = torch.randn(vshape, generator=g), torch.randn(mshape, generator=g)
    vecs[0, 0, ..., 0] = float("-inf")                    # impossible children stay -inf
    mats[..., -1, :] = float("-inf")
    ours = max_plus_contract(vecs, mats, chunk)
    assert torch.equal(ours, materialized(vecs, mats))


@pytest.mark.parametrize("chunk", [1, 5, 1 << 18])
def test_q_first_layout_is_the_same_contraction(chunk):
    g = torch.Generator().manual_seed(chunk)
    vecs, mats = torch.randn(2, 6, 3, 4, generator=g), torch.randn(2, 6, 3, 4, 5, generator=g)
    ours = max_plus_qfirst(vecs, mats.movedim(-2, 0).contiguous(), chunk)
    assert torch.equal(ours, materialized(vecs, mats))


def test_max_plus_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 9, 5, generator=g), torch.randn(1, 7, 5, generator=g)
    ref = (x[:, :, None, :] + w[:, None]).amax(-1)
    assert torch.equal(max_plus(x, w, chunk=3), ref)


def random_params(lengths, NT, T, shared, seed, scale=2.0):
    """test_decoding's random grammar, sharper (scale 2) so that maxima are well separated."""
    return decoding_params(lengths, NT, T, shared, seed, scale)


def joint(params, b, nodes, tags):
    """log p(tree, preterminals, words), read off the tables; nodes as (start, end, label)."""
    NT = params.num_nonterminals
    label = {(i, j): a for i, j, a in nodes}
    L = int(params.lengths[b])

    def sym(i, j):
        return label[(i, j)] if j - i > 1 else NT + tags[i]
    total = params.roots[b, label[(0, L)]].item()
    total += sum(params.terms[b, p, tags[p]].item() for p in range(L))
    for (i, j), a in label.items():
        k = next(k for k in range(i + 1, j)
                 if (k - i == 1 or (i, k) in label) and (j - k == 1 or (k, j) in label))
        total += params.rules[b, a, sym(i, k), sym(k, j)].item()
    return total


def brute_force(params, b):
    L, NT, T = int(params.lengths[b]), params.num_nonterminals, params.num_preterminals
    return max(joint(params, b, tree, tags) for tree in all_trees(0, L, NT)
               for tags in itertools.product(range(T), repeat=L))


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("lengths", [[2, 3], [5, 4, 2], [4, 1, 5]])
def test_viterbi_is_the_brute_force_maximum(lengths, shared):
    params = random_params(lengths, NT=2, T=2, shared=shared, seed=sum(lengths) + shared)
    score, trees = viterbi(params)
    for b, L in enumerate(lengths):
        if L < 2:
            assert torch.isinf(score[b]) and score[b] < 0
            continue
        best = brute_force(params, b)
        assert score[b].item() == pytest.approx(best, rel=1e-12)
        nodes = trees.labeled_lists()[b]
        assert joint(params, b, nodes, trees.preterminals[b].tolist()) == \
            pytest.approx(best, rel=1e-12)


def test_one_word_batch():
    params = random_params([1, 1], NT=2, T=3, shared=True, seed=4)
    score, trees = viterbi(params)
    assert torch.isinf(score).all()
    assert torch.equal(trees.preterminals[:, 0], params.terms[:, 0].argmax(-1))


def test_chunked_batch_gives_the_same_trees(monkeypatch):
    """A batch cut into chunks (a small CHART_BUDGET) decodes exactly as in one piece."""
    params = random_params([6, 3, 5, 1, 4], NT=3, T=2, shared=True, seed=9)
    whole, trees = viterbi(params)
    monkeypatch.setattr(viterbi_module, "CHART_BUDGET", 3 * 3 * 7 ** 2 * 2)   # 2 per chunk
    parts, chunked = viterbi(params)
    assert torch.equal(whole, parts)
    for field in ("spans", "labels", "lengths", "preterminals"):
        assert torch.equal(getattr(trees, field), getattr(chunked, field))
