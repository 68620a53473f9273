"""The Sets, Sequences and Phylogenetics tasks of da Silva et al. (2024) in
tests/benchmarks/divergence_tasks: exact Z, target and sampler distributions against brute-force
enumeration on tiny sizes (phylo with both policies), the Monte Carlo L1 against the exact one,
the GIN policy's contract, one step of every objective, the study's options and --quick study."""
from __future__ import annotations

import csv
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))

from divergence_tasks import PhyloTask, SequencesTask, SetsTask  # noqa: E402
from divergence_tasks.policy_nets import GINPolicy, masked_log_softmax  # noqa: E402
from gfnem_cli.engine.objectives import OBJECTIVES, build_objective  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def perturb(sampler, scale=0.7, seed=3):
    """A sampler far from uniform, so agreement with enumeration is not a coincidence."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sampler.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return sampler


# ---------------------------------------------------------------------------------- sets
def test_sets_log_z_and_target_sampling_match_enumeration():
    task = SetsTask(7, 3, seed=5)
    subsets = list(itertools.combinations(range(7), 3))
    log_r = torch.tensor([float(task.f[list(s)].sum()) for s in subsets], dtype=torch.float64)
    assert task.log_z_exact == pytest.approx(float(torch.logsumexp(log_r, 0)), abs=1e-10)
    draws = task.sample_target(40000, torch.Generator().manual_seed(0))
    assert bool((draws.sum(1) == 3).all())
    index = {s: k for k, s in enumerate(subsets)}
    counts = torch.zeros(len(subsets), dtype=torch.float64)
    for row in draws.nonzero()[:, 1].view(-1, 3).tolist():
        counts[index[tuple(row)]] += 1
    exact = torch.softmax(log_r, 0)
    assert float((counts / counts.sum() - exact).abs().max()) < 0.01


def test_sets_exact_pt_matches_sum_over_all_orders():
    task = SetsTask(5, 3, seed=1)
    sampler = perturb(task.new_sampler(0))
    orders = torch.tensor(list(itertools.permutations(range(5), 3)))
    log_pf = task.log_pf_of_orders(sampler, orders).double()
    by_set: dict[int, float] = {}
    for order, lp in zip(orders.tolist(), log_pf.exp().tolist()):
        mask = sum(1 << d for d in order)
        by_set[mask] = by_set.get(mask, 0.0) + lp
    masks, log_pt = task.exact_log_pt(sampler)
    assert len(masks) == math.comb(5, 3)
    for mask, lp in zip(masks.tolist(), log_pt.exp().tolist()):
        assert lp == pytest.approx(by_set[mask], rel=1e-5)
    assert float(log_pt.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_sets_sampler_frequencies_and_trajectory_terms():
    task = SetsTask(5, 2, seed=2)
    sampler = perturb(task.new_sampler(0))
    traj = task.sample(sampler, 30000, torch.Generator().manual_seed(1))
    assert torch.allclose(traj.log_pb, torch.full_like(traj.log_pb, -math.log(2)))
    assert torch.allclose(traj.log_flows[:, -1], traj.log_reward)
    assert torch.allclose(traj.log_flows[:, 0], sampler.log_z.detach().expand(30000))
    assert torch.allclose(traj.log_reward.double(), task.log_reward(traj.z), atol=1e-5)
    masks, log_pt = task.exact_log_pt(sampler)
    sampled = (traj.z.long() * (1 << torch.arange(5))).sum(1)
    freq = torch.stack([(sampled == m).double().mean() for m in masks])
    assert float((freq - log_pt.exp()).abs().max()) < 0.015
    # P_F(τ)/P_B(τ|x) averaged over x's orders is p_T(x): the Monte Carlo estimate with all
    # 2 orders of each set (drawn many times) is close to the exact value.
    members = (masks[:, None] & (1 << torch.arange(5))) != 0
    estimate = task.estimate_log_pt(sampler, members, 400, torch.Generator().manual_seed(2))
    assert torch.allclose(estimate.exp(), log_pt.exp(), rtol=0.1)


def test_sets_monte_carlo_l1_tracks_exact_l1():
    task = SetsTask(12, 6, seed=0, eval_sets=2048, eval_orders=16)
    for sampler in (task.new_sampler(0), perturb(task.new_sampler(1), 0.3)):
        exact, estimate = task.exact_l1(sampler), task.estimate_l1(sampler)
        assert estimate == pytest.approx(exact, abs=0.06), (exact, estimate)


# ---------------------------------------------------------------------------------- sequences
def test_sequences_log_z_and_target_match_enumeration():
    task = SequencesTask(3, 3, seed=4)
    objects = [s for n in (1, 2, 3) for s in itertools.product(range(3), repeat=n)]
    log_r = torch.tensor([sum(float(task.g[i] * task.f[t]) for i, t in enumerate(s)) for s in objects],
                         dtype=torch.float64)
    assert task.log_z_exact == pytest.approx(float(torch.logsumexp(log_r, 0)), abs=1e-10)
    listed = [tuple(t for t in row if t != 3) for row in task.all_sequences().tolist()]
    assert listed == objects
    assert torch.allclose(task.exact_target(), torch.softmax(log_r, 0))


def test_sequences_exact_pt_matches_stepwise_enumeration():
    task = SequencesTask(3, 3, seed=4)
    sampler = perturb(task.new_sampler(0), 0.3)
    log_pt = task.exact_log_pt(sampler)
    for row, value in zip(task.all_sequences().tolist(), log_pt.tolist()):
        n = sum(t != 3 for t in row)
        total = 0.0
        for k in range(n + 1):                          # k tokens so far; then a token or end
            prefix = torch.tensor([row[:k] + [3] * (3 - k)])
            with torch.no_grad():
                logits, _ = sampler(task.features(prefix))
            step = masked_log_softmax(logits, task._allowed(torch.tensor([k])))[0]
            total += float(step[row[k]] if k < n else step[3])
        assert value == pytest.approx(total, rel=1e-5, abs=1e-5)
    assert float(log_pt.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_sequences_sampled_trajectories_are_the_enumerated_ones():
    task = SequencesTask(3, 2, seed=0)
    sampler = perturb(task.new_sampler(0))
    traj = task.sample(sampler, 30000, torch.Generator().manual_seed(5))
    objects = task.all_sequences()
    index = {tuple(r): k for k, r in enumerate(objects.tolist())}
    ids = torch.tensor([index[tuple(r)] for r in traj.z.tolist()])
    log_pt = task.exact_log_pt(sampler).float()
    assert torch.allclose(traj.log_pf.detach(), log_pt[ids], atol=1e-5)   # P_B = 1: P_F(τ) = p_T(x)
    freq = torch.bincount(ids, minlength=len(objects)).double() / len(ids)
    assert float((freq - log_pt.double().exp()).abs().max()) < 0.015
    lengths = (traj.z != 3).sum(1)
    assert torch.equal(traj.step_mask.sum(1), lengths + 1)
    assert torch.allclose(traj.log_flows.gather(1, (lengths + 1)[:, None]).squeeze(1), traj.log_reward)
    assert torch.allclose(traj.log_reward.double(), task.log_reward(traj.z), atol=1e-5)


# ---------------------------------------------------------------------------------- phylo
def brute_log_lik(task, tree) -> float:
    """Σ_sites log Σ over every assignment of the internal nodes (root uniform) of Π P(edge)."""
    internal = []

    def walk(node):                       # a node is a species index or a (left, right) pair
        if isinstance(node, int):
            return node
        internal.append(node)
        return (walk(node[0]), walk(node[1]))
    walk(tree)
    total = 0.0
    for site in range(task.sites):
        lik = 0.0
        for states in itertools.product(range(4), repeat=len(internal)):
            value = dict(zip(map(id, internal), states))
            p = 0.25

            def edges(node):
                nonlocal p
                for child in node:
                    child_state = int(task.data[child, site]) if isinstance(child, int) else value[id(child)]
                    p *= float(task.P[value[id(node)], child_state])
                    if not isinstance(child, int):
                        edges(child)
            edges(tree)
            lik += p
        total += math.log(lik)
    return total


@pytest.mark.parametrize("policy", ["gin", "mlp"])
def test_phylo_exact_distributions_match_enumeration_of_trajectories(policy):
    task = PhyloTask(4, 3, seed=2, policy=policy)
    sampler = perturb(task.new_sampler(0), 0.5)
    feats, log_pt, log_r = task.exact(sampler)
    assert len(feats) == 15                                   # (2·4 − 3)!! rooted trees
    key = {tuple(row.nonzero().squeeze(1).tolist()): k for k, row in enumerate(feats)}
    by_tree, log_pb_sum = torch.zeros(15, dtype=torch.float64), torch.zeros(15, dtype=torch.float64)
    for actions in itertools.product(range(6), repeat=3):
        state, nodes, log_pf, log_pb = task._initial(1), list(range(4)), 0.0, 0.0
        ok = True
        for a in actions:
            allowed = task._allowed(state["clade"])
            if not allowed[0, a]:
                ok = False
                break
            with torch.no_grad():
                logits, _ = sampler(state)
            log_pf += float(masked_log_softmax(logits, allowed)[0, a])
            i, j = task.pairs[a].tolist()
            nodes[i], nodes[j] = (nodes[i], nodes[j]), None
            state = task._join(state, torch.tensor([a]))
            clades = state["clade"][0]
            log_pb -= math.log(int(((clades > 0) & (clades & (clades - 1) > 0)).sum()))
        if not ok:
            continue
        k = key[tuple(state["feats"][0].nonzero().squeeze(1).tolist())]
        by_tree[k] += math.exp(log_pf)
        log_pb_sum[k] += math.exp(log_pb)
        assert float(log_r[k]) == pytest.approx(brute_log_lik(task, nodes[0]), abs=1e-9)
    assert torch.allclose(by_tree, log_pt.exp(), rtol=1e-5)
    assert task.log_z_exact == pytest.approx(float(torch.logsumexp(log_r, 0)), abs=1e-9)
    assert torch.allclose(log_pb_sum, torch.ones(15, dtype=torch.float64))   # P_B sums to 1 per tree
    traj = task.sample(sampler, 20000, torch.Generator().manual_seed(3))
    ids = torch.tensor([key[tuple(r.nonzero().squeeze(1).tolist())] for r in traj.z])
    freq = torch.bincount(ids, minlength=15).double() / len(ids)
    assert float((freq - log_pt.exp()).abs().max()) < 0.015
    assert torch.allclose(traj.log_reward.double(), log_r[ids], atol=1e-4)


def test_gin_policy_shapes_masks_and_normalises():
    task = PhyloTask(5, 6, seed=1)
    sampler = perturb(task.new_sampler(0), 0.3)
    assert isinstance(sampler, GINPolicy)
    state = task._initial(3)
    state = task._join(state, torch.tensor([0, 4, 9]))          # (0,1), (1,2), (3,4)
    logits, flow = sampler(state)
    assert logits.shape == (3, 10) and flow.shape == (3,)
    allowed = task._allowed(state["clade"])
    log_p = masked_log_softmax(logits, allowed)
    assert bool(torch.isneginf(log_p[~allowed]).all()) and bool(torch.isfinite(log_p[allowed]).all())
    assert torch.allclose(log_p.exp().sum(1), torch.ones(3))
    traj = task.sample(sampler, 500, torch.Generator().manual_seed(0))
    assert traj.log_pf_steps.shape == (500, 4) and bool(torch.isfinite(traj.log_pf_steps).all())
    assert bool((traj.log_pf_steps <= 0).all()) and traj.log_flows.shape == (500, 5)


def test_gin_policy_is_blind_to_the_order_of_joins():
    """Two join orders reaching one forest get one policy and one flow (the exact p_T needs it)."""
    task = PhyloTask(5, 6, seed=1)
    sampler = perturb(task.new_sampler(0), 0.3)
    a = task._join(task._join(task._initial(1), torch.tensor([0])), torch.tensor([9]))
    b = task._join(task._join(task._initial(1), torch.tensor([9])), torch.tensor([0]))
    assert not torch.equal(a["root"], b["root"])                 # the nodes are numbered apart
    with torch.no_grad():
        (la, fa), (lb, fb) = sampler(a), sampler(b)
    assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(fa, fb, atol=1e-5)


def test_gin_short_training_decreases_l1():
    import objectives_study
    task = PhyloTask(5, 10, seed=0)
    curve = objectives_study.train(task, "reverse_kl", 0, steps=40, eval_every=40,
                                   num_per_input=32, lr=1e-2, lr_flows=1e-1)
    assert curve[-1][1] < curve[0][1] - 0.2, curve


# ---------------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("task", [SetsTask(32, 16), SequencesTask(8, 6), PhyloTask(7, 25)],
                         ids=["sets", "sequences", "phylo"])
def test_every_objective_takes_a_finite_step(task):
    sampler = task.new_sampler(0)
    for name in OBJECTIVES:
        sampler.zero_grad()
        loss = build_objective(name)(task.sample(sampler, 16, torch.Generator().manual_seed(0)))
        loss.backward()
        grads = [p.grad for p in sampler.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


# ---------------------------------------------------------------------------------- the study
def test_quick_study_runs_end_to_end_and_resumes(tmp_path, capsys):
    import objectives_study
    argv = ["--quick", "--target", "sets-small", "--seeds", "1", "--out", str(tmp_path)]
    objectives_study.main(argv)
    with open(tmp_path / "objectives_sets-small.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    finals = {r["objective"]: float(r["l1"]) for r in rows if int(r["step"]) == 64}
    first = {r["objective"]: float(r["l1"]) for r in rows if int(r["step"]) == 0}
    assert set(finals) == set(OBJECTIVES)
    assert all(finals[n] < first[n] for n in ("reverse_kl", "renyi", "tsallis", "vargrad"))
    table = (tmp_path / "objectives_sets-small.md").read_text()
    assert all(f"| {n} |" in table for n in OBJECTIVES)
    assert (tmp_path / "objectives_sets-small.png").stat().st_size > 0
    capsys.readouterr()
    objectives_study.main(argv)                      # every cell finished: nothing retrained
    assert " seed 0: L1" not in capsys.readouterr().err
    with open(tmp_path / "objectives_sets-small.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)


def test_study_options_reach_the_task_the_resume_key_and_the_table(tmp_path):
    import json
    import objectives_study
    objectives_study.main(["--target", "phylo", "--objectives", "tb", "--seeds", "1", "--steps", "2",
                           "--eval-every", "2", "--log-z-init", "exact", "--policy", "mlp",
                           "--out", str(tmp_path)])
    settings = json.loads((tmp_path / "objectives_phylo.json").read_text())
    assert settings["log_z_init"] == "exact" and settings["policy"] == "mlp"
    table = (tmp_path / "objectives_phylo.md").read_text()
    assert "policy mlp, log Z init exact" in table and "posterior entropy" in table
    refused = tmp_path / "refused"
    for argv in (["--target", "sets", "--policy", "gin"], ["--target", "paper", "--reward-scale", "2"],
                 *(["--target", "sequences", "--reward-scale", v] for v in ("nan", "0", "-1", "inf")),
                 ["--target", "tree", "--log-z-init", "exact"]):
        with pytest.raises(SystemExit) as caught:
            objectives_study.main(argv + ["--out", str(refused)])
        assert caught.value.code == 2 and not refused.exists()


@pytest.mark.parametrize("task", [SetsTask(5, 2), SequencesTask(3, 2), PhyloTask(4, 3)],
                         ids=["sets", "sequences", "phylo"])
def test_log_z_init_exact_starts_at_the_exact_log_z(task):
    from divergence_tasks.options import init_log_z
    sampler = task.new_sampler(0)
    init_log_z(sampler, task, "zero")
    assert float(sampler.log_z.detach()) == 0.0
    init_log_z(sampler, task, "exact")
    assert float(sampler.log_z.detach()) == pytest.approx(task.log_z_exact, rel=1e-6)


def test_sequences_reward_scale_scales_f_and_keeps_z_exact():
    base, scaled = SequencesTask(3, 3, seed=4), SequencesTask(3, 3, seed=4, reward_scale=3.0)
    assert torch.allclose(scaled.f, 3 * base.f) and torch.equal(scaled.g, base.g)
    log_r = scaled.log_reward(scaled.all_sequences())
    assert scaled.log_z_exact == pytest.approx(float(torch.logsumexp(log_r, 0)), abs=1e-10)
    assert "entropy" in scaled.describe()


def test_a_default_given_explicitly_keys_the_same_run_as_one_left_out():
    import argparse
    from divergence_tasks import options
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    task = SequencesTask(3, 2)
    left_out = options.settings("sequences", task, parser.parse_args([]))
    given = options.settings("sequences", task, parser.parse_args(
        ["--task-seed", "0", "--reward-scale", "1", "--log-z-init", "zero"]))
    assert left_out == given == {}
    other = options.settings("sequences", task, parser.parse_args(["--reward-scale", "2"]))
    assert other == {"reward_scale": 2.0}
