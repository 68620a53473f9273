"""Tree GFlowNet sampler: valid rollouts, teacher forcing, P_B, exploration, flows, fidelity.

The reward here is a tiny PCFG scored by this file (preterminals summed out, checked against
brute force), so these tests do not depend on the grammar models. Everything that can be
enumerated is: a 4-word sentence has 5 shapes, 6 merge-position sequences.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from gfnem_cli.engine.objectives import build_objective
from grammars.binary_trees import BinaryTrees
from grammars.gflownet import TreeSampler
from toy_pcfg import (ToyPCFG, all_trajectories, check_tree, exact_posterior,  # noqa: F401
                      key, l1, model_tree_distribution, to_trees, tree_keys)
from tree_enumeration import all_trees  # noqa: F401  (re-exported for the other tree tests)

TINY = dict(d_model=16, num_layers=1, num_heads=2)


# ============================================================================== fixtures
def make(learn_backward=False, vocab=6, nt=3, seed=0, **kw):
    torch.manual_seed(seed)
    return TreeSampler(vocab, nt, learn_backward=learn_backward, **{**TINY, **kw})


MIXED = torch.tensor([1, 2, 5, 3, 7])


def mixed_ids(vocab=6):
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (len(MIXED), int(MIXED.max())), generator=gen)


# ================================================================================= tests
def test_toy_reward_sums_out_preterminals_exactly():
    g = ToyPCFG(nt=2, t=2, v=3, seed=3)
    words = [0, 2, 1]
    for nodes in all_trees(0, 3, 2):
        tree = to_trees([nodes], 3)
        got = g.log_joint(torch.tensor([words]), tree.lengths, tree).item()
        (i, j, a) = nodes[-1]
        inner = nodes[0]
        brute = []
        for pre in itertools.product(range(2), repeat=3):
            sym = [g.nt + p for p in pre]
            lp = g.roots[a] + sum(g.emit[p, w] for p, w in zip(pre, words))
            if inner[:2] == (0, 2):
                lp = lp + g.rules[a, inner[2], sym[2]] + g.rules[inner[2], sym[0], sym[1]]
            else:
                lp = lp + g.rules[a, sym[0], inner[2]] + g.rules[inner[2], sym[1], sym[2]]
            brute.append(lp)
        assert got == pytest.approx(torch.logsumexp(torch.stack(brute), 0).item(), abs=1e-5)


@pytest.mark.parametrize("learn_backward", [False, True])
def test_rollouts_are_valid_binary_trees_for_mixed_lengths(learn_backward):
    s, nt = make(learn_backward), 3
    ids = mixed_ids()
    tr = s.sample(ids, MIXED, num_per_input=4)
    n_rows = MIXED.repeat_interleave(4)
    assert tr.z.spans.shape == (20, 6, 2) and tr.log_pf.shape == (20,)
    assert tr.log_pf_steps.shape == tr.step_mask.shape == (20, 6)
    assert tr.log_z.shape == (5,) and tr.behaviour_log_pf.shape == (20,)
    assert torch.equal(tr.step_mask.sum(1), n_rows - 1)
    for nodes, n, pad in zip(tr.z.labeled_lists(), n_rows.tolist(), tr.z.labels.tolist()):
        check_tree(nodes, n, nt)
        assert all(a == -1 for a in pad[n - 1:])
    assert torch.all(tr.z.spans[tr.z.labels < 0] == -1)
    assert torch.all(tr.log_pf[n_rows == 1] == 0) and torch.all(tr.log_pf[n_rows > 2] < 0)


@pytest.mark.parametrize("learn_backward", [False, True])
def test_sampled_log_probs_equal_teacher_forced_recomputation(learn_backward):
    s = make(learn_backward)
    ids = mixed_ids()
    tr = s.sample(ids, MIXED, num_per_input=3, temperature=1.7, epsilon=0.2)
    again = s.score(ids, MIXED, tr.z, order="given", temperature=1.7, epsilon=0.2)
    torch.testing.assert_close(again.log_pf_steps, tr.log_pf_steps, atol=1e-5, rtol=0)
    torch.testing.assert_close(again.log_pb_steps, tr.log_pb_steps, atol=1e-5, rtol=0)
    torch.testing.assert_close(again.behaviour_log_pf, tr.behaviour_log_pf, atol=1e-5, rtol=0)
    torch.testing.assert_close(again.log_z, tr.log_z)
    log_pf, log_pb = s.log_prob_of(ids, MIXED, tr.z, order="given")
    torch.testing.assert_close(log_pf, tr.log_pf, atol=1e-5, rtol=0)
    log_pf.sum().backward()   # teacher forcing is differentiable
    assert s.heads.position.weight.grad is not None


def test_uniform_backward_log_prob_counts_splittable_roots():
    s = make(False)
    ids = mixed_ids()
    tr = s.sample(ids, MIXED, num_per_input=4)
    n_rows = MIXED.repeat_interleave(4).tolist()
    for row, (nodes, n) in enumerate(zip(tr.z.labeled_lists(), n_rows)):
        roots = [(i, i + 1) for i in range(n)]
        expect = []
        for i, j, _ in nodes:   # construction order = the trajectory
            p = next(q for q, r in enumerate(roots) if r[0] == i)
            roots[p:p + 2] = [(i, j)]
            expect.append(-math.log(sum(1 for a, b in roots if b - a >= 2)))
        got = tr.log_pb_steps[row, : n - 1].tolist()
        assert got == pytest.approx(expect, abs=1e-6)
        assert tr.log_pb[row].item() == pytest.approx(sum(expect), abs=1e-5)


@pytest.mark.parametrize("learn_backward", [False, True])
def test_backward_probabilities_sum_to_one_over_the_trajectories_of_each_tree(learn_backward):
    s, n = make(learn_backward, nt=2), 4
    trajs = all_trajectories(n, list(itertools.product(range(2), repeat=3)))   # 6 x 8
    trees = to_trees(trajs, n)
    with torch.no_grad():
        log_pf, log_pb = s.log_prob_of(torch.tensor([[1, 4, 2, 0]]), torch.tensor([n]), trees,
                                       order="given")
    per_tree: dict[frozenset, list[float]] = {}
    for nodes, lp in zip(trajs, log_pb.tolist()):
        per_tree.setdefault(key(nodes), []).append(math.exp(lp))
    assert len(per_tree) == 40                   # 5 shapes x 2^3 labelings
    assert sorted(len(v) for v in per_tree.values()) == [1] * 32 + [2] * 8   # balanced: 2 orders
    for probs in per_tree.values():
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    # P_F over all trajectories (all labelings) is a distribution
    dist = model_tree_distribution(s, [1, 4, 2, 0], 2)
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-5) and len(dist) == 40


def test_exploration_is_marked_off_policy_and_its_behaviour_policy_is_normalized():
    s = make(False)
    ids = mixed_ids()
    plain = s.sample(ids, MIXED, num_per_input=2)
    assert plain.on_policy
    torch.testing.assert_close(plain.behaviour_log_pf, plain.log_pf)
    for kw in (dict(temperature=2.0), dict(epsilon=0.3)):
        tr = s.sample(ids, MIXED, num_per_input=2, **kw)
        assert not tr.on_policy
        long = MIXED.repeat_interleave(2) > 2
        assert torch.all((tr.behaviour_log_pf - tr.log_pf)[long].abs() > 1e-6)
        # the behaviour policy sums to one over every trajectory of a 4-word sentence
        trajs = all_trajectories(4, list(itertools.product(range(3), repeat=3)))
        trees = to_trees(trajs, 4)
        with torch.no_grad():
            sc = s.score(torch.tensor([[1, 4, 2, 0]]), torch.tensor([4]), trees, **kw)
        assert sc.behaviour_log_pf.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
        assert sc.log_pf.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
        assert not sc.on_policy


def test_batch_advances_together_one_encoder_pass_per_step():
    s = make(True)
    calls = []
    s.encoder.register_forward_hook(lambda *a: calls.append(1))
    for b in (2, 8):
        calls.clear()
        lengths = torch.tensor([7] + [3] * (b - 1))
        s.sample(torch.zeros(b, 7, dtype=torch.long), lengths, num_per_input=3)
        assert len(calls) == 6                    # T = 7 - 1 steps, independent of B and N


def test_sample_backward_order_gives_a_valid_trajectory_and_uniform_order_choice():
    s = make(False)
    balanced = [(0, 2, 0), (2, 4, 1), (0, 4, 2)]
    trees = to_trees([balanced] * 400, 4)
    ids = torch.tensor([[1, 4, 2, 0]])
    with torch.no_grad():
        order = s.node_order(ids.expand(400, 4), trees.lengths, trees, "sample_backward",
                             generator=torch.Generator().manual_seed(0))
        first = order[:, 0, :2].tolist()
        assert all(o[2].tolist() == [0, 4, 2] for o in order)
        frac = sum(f == [0, 2] for f in first) / 400
        assert 0.4 < frac < 0.6                  # P_B splits either child first with 1/2
        log_pf, log_pb = s.log_prob_of(ids, torch.tensor([4]), trees)   # order="sample_backward"
        ref_a = s.log_prob_of(ids, torch.tensor([4]), to_trees([balanced], 4), order="given")[0]
        swapped = to_trees([[balanced[1], balanced[0], balanced[2]]], 4)
        ref_b = s.log_prob_of(ids, torch.tensor([4]), swapped, order="given")[0]
    ok = torch.isclose(log_pf, ref_a, atol=1e-5) | torch.isclose(log_pf, ref_b, atol=1e-5)
    assert ok.all()
    assert torch.allclose(log_pb, torch.full_like(log_pb, math.log(0.5)))


def test_node_order_must_be_bottom_up_unless_sorted_by_width():
    s = make(False)
    top_first = [(0, 3, 0), (0, 2, 1)]
    trees = to_trees([top_first], 3)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="order"):
        s.log_prob_of(ids, torch.tensor([3]), trees, order="given")
    log_pf, _ = s.log_prob_of(ids, torch.tensor([3]), trees, order="width")
    ref, _ = s.log_prob_of(ids, torch.tensor([3]), to_trees([top_first[::-1]], 3), order="given")
    torch.testing.assert_close(log_pf, ref)
    with pytest.raises(ValueError, match="n-1"):
        s.log_prob_of(ids, torch.tensor([3]), to_trees([[(0, 3, 0)]], 3))


class _NoPartial(ToyPCFG):
    def partial_log_joint(self, ids, lengths, trees):
        return torch.zeros(len(trees))


def test_flows_are_forward_looking_with_log_z_first_and_log_r_last():
    g = ToyPCFG(nt=3, t=2, v=6, seed=1)
    s = make(False)
    ids = mixed_ids()
    gen = lambda: torch.Generator().manual_seed(5)
    tr = s.sample(ids, MIXED, num_per_input=2, reward=g, need_flows=True, generator=gen())
    bare = s.sample(ids, MIXED, num_per_input=2, reward=_NoPartial(3, 2, 6, seed=1),
                    need_flows=True, generator=gen())
    assert torch.equal(tr.z.spans, bare.z.spans)
    n_rows = MIXED.repeat_interleave(2)
    rows = torch.arange(len(n_rows))
    assert tr.log_flows.shape == (10, 7)
    torch.testing.assert_close(tr.log_flows[:, 0], tr.log_z.repeat_interleave(2))
    expect = g.log_joint(ids.repeat_interleave(2, 0), n_rows, tr.z)
    torch.testing.assert_close(tr.log_reward, expect)
    multi = n_rows > 1
    torch.testing.assert_close(tr.log_flows[rows, n_rows - 1][multi], tr.log_reward[multi])
    torch.testing.assert_close(tr.log_flows[:, -1][multi], tr.log_reward[multi])
    for t in range(1, 6):
        inner = t < n_rows - 1
        if not inner.any():
            continue
        first_t = (torch.arange(6) < t)[None]
        partial = BinaryTrees(spans=torch.where(first_t[..., None], tr.z.spans, -1),
                              labels=torch.where(first_t, tr.z.labels, -1), lengths=n_rows)
        fixed = g.partial_log_joint(ids.repeat_interleave(2, 0), n_rows, partial)
        torch.testing.assert_close((tr.log_flows[:, t] - bare.log_flows[:, t])[inner], fixed[inner])
    with pytest.raises(ValueError, match="reward"):
        s.sample(ids, MIXED, need_flows=True)


def test_tb_trained_sampler_matches_the_exact_posterior():
    """Posterior fidelity: NT=2, 4 words -> 40 trees; P_T(x) by enumerating all 48 trajectories."""
    torch.manual_seed(0)
    g = ToyPCFG(nt=2, t=2, v=5, scale=1.5, seed=7)
    sentences = [[0, 3, 1, 4], [2, 2, 0, 1]]
    s = TreeSampler(5, 2, d_model=32, num_layers=1, num_heads=2)
    steps, n_per = 300, 32
    tb = build_objective("tb")
    opt = torch.optim.Adam(s.parameters(), lr=1e-2)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - 0.9 * i / steps)
    ids, lengths = torch.tensor(sentences), torch.tensor([4, 4])
    for _ in range(steps):
        tr = s.sample(ids, lengths, num_per_input=n_per, epsilon=0.1, reward=g)
        opt.zero_grad()
        tb(tr).backward()     # on ε-explored samples: TB reads the untempered log_pf
        opt.step()
        decay.step()
    for words in sentences:
        exact, _, _ = exact_posterior(g, words)
        assert max(exact.values()) < 0.5          # not a trivial, one-tree posterior
        model = model_tree_distribution(s, words, 2)
        assert l1(model, exact) < 0.1


def test_sampled_trees_follow_the_enumerated_tree_distribution():
    s = make(False, vocab=5, nt=2, seed=3)
    words = [0, 3, 1, 4]
    model = model_tree_distribution(s, words, 2)
    with torch.no_grad():
        tr = s.sample(torch.tensor([words]), torch.tensor([4]), num_per_input=8000,
                      generator=torch.Generator().manual_seed(0))
    counts: dict[frozenset, float] = {}
    for k in tree_keys(tr.z):
        counts[k] = counts.get(k, 0.0) + 1 / 8000
    assert l1(counts, model) < 0.12


@pytest.mark.parametrize("kind", ["npcfg", "ncfg"])
def test_grammar_models_as_rewards_feed_the_engine_objectives(kind):
    """The real models' (partial) scores fill log_reward and log_flows; SubTB/DB/TB accept them."""
    from grammars.models import build_grammar

    model = build_grammar(kind, 9, seed=0, nonterminals=4, preterminals=5, symbol_dim=16)
    s = make(True, vocab=9, nt=4)
    lengths = torch.tensor([2, 5, 3, 7])   # a PCFG gives 1-word sentences log R = -inf
    ids = torch.randint(0, 9, (4, 7), generator=torch.Generator().manual_seed(0))
    tr = s.sample(ids, lengths, num_per_input=2, reward=model, need_flows=True)
    n_rows = lengths.repeat_interleave(2)
    with torch.no_grad():
        expect = model.log_joint(ids.repeat_interleave(2, 0), n_rows, tr.z)
    torch.testing.assert_close(tr.log_reward, expect)
    rows_ = torch.arange(len(n_rows))
    torch.testing.assert_close(tr.log_flows[rows_, n_rows - 1][n_rows > 1], expect[n_rows > 1])
    for name in ("subtb", "db", "tb"):
        s.zero_grad()
        loss = build_objective(name)(tr)
        assert torch.isfinite(loss)
        loss.backward(retain_graph=True)
        assert s.heads.flow_root.weight.grad is not None or name == "tb"
        assert s.heads.backward.weight.grad is not None
