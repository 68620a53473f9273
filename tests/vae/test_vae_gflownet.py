"""The grid GFlowNet against enumeration: trajectory probabilities, teacher forcing, masks,
and every engine objective on its trajectories."""
from __future__ import annotations

import math

import pytest
import torch

from gfnem_cli.engine.objectives import OBJECTIVES, build_objective
from vae.code_grids import CodeGrids, grid_index
from vae.gflownet import GridSampler, GridState
from vae.models import Decoder, DiscreteVAE, UniformPrior
from vae_grid_oracles import marginal_by_state_expansion, marginal_by_trajectory_sum

GRID, K = (2, 2), 3


def sampler_for(order: str, seed: int = 0) -> GridSampler:
    torch.manual_seed(seed)
    sampler = GridSampler(K, GRID, order, channels=8, blocks=1)
    with torch.no_grad():      # a sharp, uneven policy, so wrong bookkeeping shows
        for p in sampler.parameters():
            p.normal_(0.0, 0.3)
    return sampler


def tiny_vae() -> DiscreteVAE:
    torch.manual_seed(5)
    return DiscreteVAE(Decoder(K, GRID, (8, 8), embedding_dim=2, channels=8),
                       UniformPrior(K, GRID))


def image(seed=0, count=1) -> torch.Tensor:
    return torch.randint(2, (count, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("order", ["raster", "any"])
def test_trajectory_sums_equal_the_policy_marginal(order):
    sampler, x = sampler_for(order), image()[0]
    by_states = marginal_by_state_expansion(sampler, x)
    by_trajectories = marginal_by_trajectory_sum(sampler, x)
    assert abs(float(torch.logsumexp(by_states, 0))) < 1e-9
    assert torch.allclose(by_states, by_trajectories, atol=1e-5)
    probs = by_states.exp()
    assert 0.05 < probs.max() < 0.5 and (probs > 1e-3).sum() > 20   # uneven, not trivial
    # what the sampler draws follows that marginal
    draws = sampler.sample(x.unsqueeze(0), 20000, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(grid_index(draws.z), minlength=K ** 4).double() / 20000
    assert float((freq - probs).abs().sum()) < 0.07


@pytest.mark.parametrize("order", ["raster", "any"])
@pytest.mark.parametrize("explore", [(1.0, 0.0), (2.0, 0.3)])
def test_teacher_forcing_reproduces_sampled_trajectories(order, explore):
    sampler, x = sampler_for(order), image(count=3)
    temperature, epsilon = explore
    traj = sampler.sample(x, 4, temperature, epsilon, generator=torch.Generator().manual_seed(2))
    forced = sampler.score(x, traj.z)
    assert torch.allclose(forced.log_pf, traj.log_pf, atol=1e-5)
    assert torch.allclose(forced.log_pb, traj.log_pb)
    assert traj.on_policy == (explore == (1.0, 0.0)) and not forced.on_policy
    if explore == (1.0, 0.0):
        assert torch.allclose(traj.behaviour_log_pf, traj.log_pf)
    else:
        assert not torch.allclose(traj.behaviour_log_pf, traj.log_pf)
    expected_pb = 0.0 if order == "raster" else -math.log(math.factorial(4))
    assert torch.allclose(traj.log_pb, torch.full((12,), expected_pb))
    # log P_F of a grid with a random order: a valid trajectory (P_B's draw), also finite
    log_pf, log_pb = sampler.log_prob_of(x, CodeGrids(traj.z.codes, K),
                                         generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(log_pf).all() and torch.allclose(log_pb, traj.log_pb)


@pytest.mark.parametrize("order", ["raster", "any"])
def test_pure_exploration_is_uniform_over_legal_actions(order):
    sampler, x = sampler_for(order), image(count=2)
    traj = sampler.sample(x, 3, epsilon=1.0)
    legal = [K * (4 - t) if order == "any" else K for t in range(4)]
    assert torch.allclose(traj.behaviour_log_pf,
                          torch.full((6,), -sum(math.log(n) for n in legal)), atol=1e-5)


def test_masks_never_allow_refilling_a_cell():
    sampler, x = sampler_for("any"), image(count=4)
    traj = sampler.sample(x, 50, epsilon=0.5, generator=torch.Generator().manual_seed(4))
    order = traj.z.order
    assert torch.equal(order.sort(1).values, torch.arange(4).expand_as(order))
    assert traj.z.is_complete().all()
    state = GridState.initial(2, GRID, K).fill(torch.tensor([1, 3]), torch.tensor([2, 0]))
    mask = state.action_mask().view(2, 4, K)
    assert not mask[0, 1].any() and not mask[1, 3].any() and mask[0, 0].all()
    grids = CodeGrids(torch.zeros(1, 2, 2, dtype=torch.long), K)
    with pytest.raises(ValueError, match="visits every cell once"):
        sampler.score(x[:1], grids, order=torch.tensor([[0, 1, 1, 2]]))
    with pytest.raises(ValueError, match="raster order only"):
        sampler_for("raster").score(x[:1], grids, order=torch.tensor([[1, 0, 2, 3]]))


OPTIONS = {"subtb": {"lambda": 0.9}, "renyi": {"alpha": 0.5}, "tsallis": {"alpha": 0.5}}


@pytest.mark.parametrize("order", ["raster", "any"])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_steps_on_grid_trajectories(order, name):
    sampler, vae, x = sampler_for(order), tiny_vae(), image(count=2)
    objective = build_objective(name, **OPTIONS.get(name, {}))
    need_flows = name in ("subtb", "db")
    traj = sampler.sample(x, 4, reward=vae, need_flows=need_flows)
    loss = objective(traj)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in sampler.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in vae.parameters())        # the reward is detached
    if name == "tb":
        assert sampler.policy.log_z_head[-1].bias.grad.abs().sum() > 0
    if need_flows:
        assert sampler.policy.flow_cell.weight.grad.abs().sum() > 0
