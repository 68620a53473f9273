"""The importance-sampled NLL bound (grammars/evaluation/importance_bound.py) against the exact NLL.

A neural PCFG is small enough for the inside algorithm, so the bound's target is known: with a
tree GFlowNet (untrained: a valid, mediocre proposal) or the uniform tree proposal, the IS NLL
lands within two standard errors of the exact NLL at M = 1000; its standard error shrinks
like 1/sqrt(M); a perfect proposal gives the exact value with zero variance; and the reported
standard error matches the spread of repeated estimates.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from grammars.data.batching import in_order_batches
from grammars.binary_trees import BinaryTrees
from grammars.gflownet import TreeSampler
from grammars.evaluation.importance_bound import (SamplerProposal, UniformTreeProposal,
                                       importance_log_likelihood,
                                       importance_sampled_likelihood)
from grammars.charts.inside import log_partition
from grammars.evaluation.likelihood import tokens_in
from grammars.models import build_grammar

SENTENCES = [[1, 2, 3], [4, 0, 5, 2], [3, 3, 1, 0, 2], [5, 4], [2, 1, 4, 4]]
V, NT = 6, 3


@pytest.fixture(scope="module")
def model():
    return build_grammar("npcfg", V, seed=3, nonterminals=NT, preterminals=4, symbol_dim=16)


def exact_nll_per_token(model, sentences) -> float:
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in in_order_batches(sentences, 8):
            total -= float(log_partition(model.params(batch.ids, batch.lengths)).double().sum())
            tokens += tokens_in(batch.lengths)
    return total / tokens


def bound(model, proposal, num_samples: int, seed: int = 0):
    run = SimpleNamespace(model=model, device="cpu")
    return importance_sampled_likelihood(run, in_order_batches(SENTENCES, 8), num_samples,
                                         seed, proposal=proposal)


def tiny_sampler(seed: int = 0) -> TreeSampler:
    torch.manual_seed(seed)
    return TreeSampler(V, NT, d_model=16, num_layers=1, num_heads=2).eval()


@pytest.mark.parametrize("which", ["tree-gflownet", "uniform"])
def test_is_nll_converges_to_the_exact_nll(model, which):
    proposal = (SamplerProposal(tiny_sampler()) if which == "tree-gflownet"
                else UniformTreeProposal(NT))
    exact = exact_nll_per_token(model, SENTENCES)
    small, large = bound(model, proposal, 10), bound(model, proposal, 1000)
    assert large.is_bound and large.num_sentences == len(SENTENCES)
    assert abs(large.nll_per_token - exact) <= 2 * large.std_error + 1e-4, (
        large.nll_per_token, exact, large.std_error)
    assert large.std_error < small.std_error / 4          # ~ 1/sqrt(M): 10x fewer samples
    assert small.nll_per_token > exact - 2 * small.std_error  # a bound, up to noise


def test_a_perfect_proposal_gives_the_exact_value_with_zero_variance(model):
    """3-word trees have one trajectory each: q = posterior makes every weight equal p(x)."""
    ids = torch.tensor([[1, 2, 3], [4, 0, 5]])
    lengths = torch.tensor([3, 3])
    trees = [[(0, 2, a), (0, 3, b)] for a in range(NT) for b in range(NT)] + \
            [[(1, 3, a), (0, 3, b)] for a in range(NT) for b in range(NT)]
    K = len(trees)
    spans = torch.tensor([[[s, e] for s, e, _ in t] for t in trees])
    labels = torch.tensor([[a for _, _, a in t] for t in trees])
    score = model.log_joint
    with torch.no_grad():
        log_joint = torch.stack([score(ids[b:b + 1].expand(K, -1), lengths[b:b + 1].expand(K),
                                       BinaryTrees(spans, labels, torch.full((K,), 3)))
                                 for b in range(2)])                       # (2, K)
    posterior = torch.log_softmax(log_joint.double(), 1)

    class Exact:
        def propose(self, ids_, lengths_, n, generator=None):
            pick = torch.multinomial(posterior.exp(), n, replacement=True, generator=generator)
            rows = torch.arange(2)[:, None].expand(2, n).reshape(-1)
            flat = pick.reshape(-1)
            return (BinaryTrees(spans[flat], labels[flat], torch.full((2 * n,), 3)),
                    posterior[rows, flat], torch.zeros(2 * n, dtype=torch.float64))

    log_p, var, ess = importance_log_likelihood(score, Exact(), ids, lengths, 50,
                                                torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = log_partition(model.params(ids, lengths)).double()
    assert torch.allclose(log_p, exact, atol=1e-5)
    assert float(var.max()) < 1e-8 and torch.allclose(ess, torch.full((2,), 50.0,
                                                                      dtype=torch.float64))


def test_standard_error_matches_the_spread_of_repeated_estimates(model):
    ids, lengths = torch.tensor([[3, 3, 1, 0, 2]]), torch.tensor([5])
    score = model.log_joint
    proposal = UniformTreeProposal(NT)
    estimates, reported = [], []
    generator = torch.Generator().manual_seed(5)
    for _ in range(40):
        log_p, var, _ = importance_log_likelihood(score, proposal, ids, lengths, 200, generator)
        estimates.append(float(log_p))
        reported.append(float(var.sqrt()))
    spread = torch.tensor(estimates).std().item()
    typical = sum(reported) / len(reported)
    assert 0.6 < spread / typical < 1.6, (spread, typical)


def test_uniform_proposal_log_probs_match_the_tree_sampler_conventions():
    """Its P_B is the tree GFlowNet's uniform P_B; its P_F is uniform over (position, label)."""
    ids = torch.tensor([[1, 2, 3, 4, 5], [2, 3, 4, 0, 0]])
    lengths = torch.tensor([5, 3])
    trees, log_pf, log_pb = UniformTreeProposal(NT).propose(
        ids, lengths, 4, torch.Generator().manual_seed(0))
    sampler = TreeSampler(V, NT, d_model=16, num_layers=1, num_heads=2, learn_backward=False)
    with torch.no_grad():
        traj = sampler.score(ids, lengths, trees, order="given")
    assert torch.allclose(traj.log_pb.double(), log_pb, atol=1e-5)
    expected = torch.tensor([-(math.log(24) + 4 * math.log(NT))] * 4 +
                            [-(math.log(2) + 2 * math.log(NT))] * 4, dtype=torch.float64)
    assert torch.allclose(log_pf, expected)


def test_run_level_bound_is_deterministic_and_leaves_the_global_rng_alone(model):
    proposal = SamplerProposal(tiny_sampler())
    state = torch.get_rng_state()
    a = bound(model, proposal, 20, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    b = bound(model, proposal, 20, seed=7)
    c = bound(model, proposal, 20, seed=8)
    assert a.total_nll == b.total_nll and a.std_error == b.std_error
    assert a.total_nll != c.total_nll
    assert a.total_tokens == sum(len(s) + 1 for s in SENTENCES)
