"""Draw parse trees for given sentences, with log q(z | x) and log p(x, z) for each draw.

Context-free runs draw from the exact posterior (inside chart, top-down), where
log q = log p(x, z) − log p(x) exactly; GFlowNet runs draw from their trained sampler, where
log q is log P_F − log P_B of the sampled trajectory (see `sampler_draws` for when that
estimate is exact).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from grammars.binary_trees import BinaryTrees
from grammars.charts.posterior_sampling import sample_posterior
from grammars.models.capabilities import has_sampler


@dataclass
class TreeDraws:
    trees: BinaryTrees        # B*n rows, the draws of one sentence contiguous
    log_q: torch.Tensor       # (B*n,)
    log_joint: torch.Tensor   # (B*n,)
    exact_posterior: bool


@torch.no_grad()
def draw_trees(run, ids: torch.Tensor, lengths: torch.Tensor, n: int) -> TreeDraws:
    if has_sampler(run):
        return sampler_draws(run, ids, lengths, n)
    params = run.model.params(ids, lengths)
    trees = sample_posterior(params, n)
    rep_ids = ids.repeat_interleave(n, 0)
    rep_len = lengths.repeat_interleave(n, 0)
    log_joint = run.model.log_joint(rep_ids, rep_len, trees)
    log_px = run.inside.log_partition(params).repeat_interleave(n, 0)
    return TreeDraws(trees, log_joint - log_px, log_joint, True)


@torch.no_grad()
def sampler_draws(run, ids: torch.Tensor, lengths: torch.Tensor, n: int):
    """n trees per sentence from the run's GFlowNet sampler, with log q and log p(x, z).

    What `log_q` is. The sampler's marginal probability of a tree is a sum over the bottom-up
    orders (trajectories τ) that build it: q(z | x) = Σ_{τ→z} P_F(τ | x). A tree over n words
    has one order when n ≤ 3 but in general many, so q(z | x) is not computed exactly.
    Instead `log_q` = log P_F(τ) − log P_B(τ | z) of the very trajectory τ that produced z.
    Conditionally on z, that τ is distributed as P_F(τ) / q(z), so
        E[ P_B(τ | z) / P_F(τ) | z ] = Σ_{τ→z} (P_F(τ) / q(z)) · P_B(τ | z) / P_F(τ)
                                     = (1 / q(z)) · Σ_{τ→z} P_B(τ | z) = 1 / q(z):
    exp(−log_q) is an *unbiased estimate of 1 / q(z | x)*. `log_q` itself is not unbiased for
    log q(z | x): by Jensen, E[log_q | z] ≥ log q(z | x) (it overestimates on average). It is
    exact when P_F(τ | z) = P_B(τ | z) for every τ → z (a GFlowNet that satisfies trajectory
    balance with this P_B), and whenever z has a single trajectory (sentences of ≤ 3 words).
    `exact_posterior` is False: these are sampler draws, not exact posterior samples.
    """
    sampler = run.sampler
    scorer = run.model
    ids = ids[:, : int(lengths.max())]
    traj = sampler.sample(ids, lengths, n, reward=scorer)
    return TreeDraws(traj.z, (traj.log_pf - traj.log_pb).detach(), traj.log_reward.detach(),
                     False)
