"""Oracles for the grid GFlowNet that enumerate: every state, every trajectory, every grid.

Small enough only for tiny grids (2×2, K = 3: 256 states, 81 grids, 24 orders)."""
from __future__ import annotations

import itertools

import torch

from vae.code_grids import CodeGrids, enumerate_grids, grid_index


@torch.no_grad()
def marginal_by_state_expansion(sampler, image: torch.Tensor) -> torch.Tensor:
    """(K^hw,) log P_F^T(z | x): push the probability of every reachable state forward one
    step at a time, calling the policy on each partial grid (duplicates merged)."""
    k, cells = sampler.num_codes, sampler.cells
    feats, summary = sampler.trunk(image.unsqueeze(0))
    states = torch.full((1, cells), -1, dtype=torch.long)
    log_p = torch.zeros(1, dtype=torch.float64)
    for t in range(cells):
        s = states.shape[0]
        h = sampler.policy.features(feats.expand(s, -1, -1), states)
        logits = sampler.policy.action_logits(h).double()          # (S, hw, K)
        if sampler.order == "raster":
            legal = torch.zeros(s, cells, k, dtype=torch.bool)
            legal[:, t] = True
        else:
            legal = (states < 0).unsqueeze(-1).expand(s, cells, k)
        flat = logits.flatten(1).masked_fill(~legal.flatten(1), float("-inf"))
        step = torch.log_softmax(flat, 1)
        rows, actions = legal.flatten(1).nonzero(as_tuple=True)
        nxt = states[rows].clone()
        nxt[torch.arange(len(rows)), actions // k] = actions % k
        weight = log_p[rows] + step[rows, actions]
        states, inverse = torch.unique(nxt, dim=0, return_inverse=True)
        merged = torch.full((states.shape[0],), float("-inf"), dtype=torch.float64)
        for j in range(states.shape[0]):           # oracle: clarity over speed
            merged[j] = torch.logsumexp(weight[inverse == j], 0)
        log_p = merged
    grids = CodeGrids(states.view(-1, *sampler.grid), k)
    out = torch.full((k ** cells,), float("-inf"), dtype=torch.float64)
    out[grid_index(grids)] = log_p
    return out


@torch.no_grad()
def marginal_by_trajectory_sum(sampler, image: torch.Tensor) -> torch.Tensor:
    """(K^hw,) log Σ_τ→z P_F(τ): teacher-force every grid along every order and sum."""
    grids = enumerate_grids(sampler.grid, sampler.num_codes)
    cells = sampler.cells
    orders = [list(range(cells))] if sampler.order == "raster" else list(
        itertools.permutations(range(cells)))
    order = torch.tensor(orders).repeat(len(grids), 1)                 # (G·O, hw)
    reps = grids.repeat_interleave(len(orders))
    traj = sampler.score(image.unsqueeze(0), reps, order=order)
    return torch.logsumexp(traj.log_pf.double().view(len(grids), len(orders)), 1)
