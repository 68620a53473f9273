"""The one-pass backward walk (issue 15): the same numbers as the two-pass code it replaced,
fewer encoder calls, k drawn per round keeping the posterior, and chains that continue."""
from __future__ import annotations

import pytest
import torch

from grammars.data.batching import SentenceBatch
from grammars.gflownet import local_search
from grammars.training.family import GrammarFamily
from gfnem_cli.engine import Exploration

from test_local_search import Flat, empirical, rows, skewed, untrained
from test_tree_gflownet import ToyPCFG, all_trees, exact_posterior, key, l1, to_trees


@pytest.mark.parametrize("learn_backward", [False, True])
def test_one_pass_log_prob_equals_the_replayed_trajectory(learn_backward):
    """log_prob_of(sample_backward) walks back once; the old way drew the same path, then
    teacher-forced P_F along it. Same RNG, same path, same log-probs; gradients flow."""
    s = skewed(learn_backward, nt=2)
    ids, lengths = torch.tensor([[0, 3, 1, 4, 2], [1, 2, 0, 0, 0]]), torch.tensor([5, 2])
    with torch.no_grad():
        trees = s.sample(ids, lengths, 4, generator=torch.Generator().manual_seed(0)).z
    log_pf, log_pb = s.log_prob_of(ids, lengths, trees, generator=torch.Generator().manual_seed(3))
    ref = s.score(ids, lengths, trees, order="sample_backward",
                  generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(log_pf, ref.log_pf, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_pb, ref.log_pb, atol=1e-5, rtol=0)
    assert log_pf.requires_grad


def test_a_round_of_k_steps_encodes_2k_minus_1_states():
    s = untrained(True)
    calls = []
    s.encoder.register_forward_hook(lambda *a: calls.append(1))
    ids, lengths = torch.tensor([[0, 3, 1, 4, 2, 1, 0]]), torch.tensor([7])
    with torch.no_grad():
        trees = s.sample(ids, lengths, 3).z
        calls.clear()
        local_search(s, ids, lengths, trees, Flat(), k=3, rounds=1, rescore=False)
    assert len(calls) == 2 * 3 - 1           # was 3k: walk, replay of the way back, proposal


@pytest.mark.parametrize("learn_backward", [False, True])
def test_k_drawn_per_round_keeps_the_exact_posterior(learn_backward):
    """k ~ U{1, 3} each round is a mixture of MH kernels, each leaving p(z|x) invariant."""
    g = ToyPCFG(nt=2, t=2, v=5, scale=1.0, seed=7)
    words, m = [0, 3, 1, 4], 12000
    exact, trees, _ = exact_posterior(g, words)
    gen = torch.Generator().manual_seed(0)
    start = rows(trees, torch.multinomial(torch.tensor(list(exact.values())), m, True,
                                          generator=gen))
    res = local_search(skewed(learn_backward), torch.tensor([words]), torch.tensor([4]), start,
                       g, k=3, rounds=4, rescore=False, generator=gen, k_draw="uniform")
    assert res.acceptance_rate > 0.05
    assert l1(empirical(res.trees), exact) < 0.07


def test_uniform_k_keeps_a_uniform_target_and_moves():
    nodes = all_trees(0, 5, 1)
    target = {key(t): 1 / len(nodes) for t in nodes}
    gen = torch.Generator().manual_seed(0)
    start = rows(to_trees(nodes, 5), torch.randint(0, len(nodes), (12000,), generator=gen))
    res = local_search(skewed(True, nt=1, scale=3.0), torch.tensor([[0, 3, 1, 4, 2]]),
                       torch.tensor([5]), start, Flat(), k=4, rounds=3, rescore=False,
                       generator=gen, k_draw="uniform")
    assert l1(empirical(res.trees), target) < 0.07
    assert (res.accepted > 0).float().mean() > 0.8


def test_mstep_rounds_continue_the_estep_chain_only_when_asked():
    """With local_search_continue, 0 more rounds on the E-step's trajectories give back the
    E-step's refined trees; without it (or on other trajectories) the sampled ones."""
    grammar = ToyPCFG(nt=2, t=2, v=5, scale=1.0, seed=7)
    s = skewed(True)
    batch = SentenceBatch(torch.tensor([[0, 3, 1, 4, 2, 1]] * 8), torch.tensor([6] * 8),
                          torch.arange(8))
    explore = Exploration(local_search_steps=3)
    for continue_ in (True, False):
        family = GrammarFamily(grammar, s, torch.device("cpu"), local_search_continue=continue_)
        with torch.no_grad():
            traj = family.sample(batch, 1, explore, False)
            e = family.refine(batch, traj, explore, 2, True, False)
            m = family.refine(batch, traj, explore, 0, False, False)
        want = e.z if continue_ else traj.z
        assert torch.equal(m.z.spans[:, :5], want.spans[:, :5])
        assert torch.equal(m.z.labels[:, :5], want.labels[:, :5])
    assert bool((e.log_reward != traj.log_reward).any())   # the E-step's round did move
