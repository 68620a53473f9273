"""Set generation (da Silva et al., 2024, §5.2; the task of Pan et al., 2023): sets of exactly
N out of D elements, built by adding one element per step.

States are binary vectors of length D; a forward action adds an absent element; P_B is uniform
over removing any present element, so P_B(s_t | s_{t+1}) = 1/(t+1) and every trajectory to x
has P_B(τ | x) = 1/N!. The reward is log r(x) = Σ_{d∈x} f(d) with
f(d) ~ Uniform(−1, 1), drawn once from torch.Generator().manual_seed(seed) (seed 0 by default):
the paper does not give f, so this is our choice.

Exact quantities:
- Z = Σ_{|x|=N} Π_{d∈x} e^{f(d)} = e_N(e^{f(1)}, …, e^{f(D)}), the elementary symmetric
  polynomial, by the O(D·N) recursion e_k(w_1..w_d) = e_k(w_1..w_{d−1}) + w_d e_{k−1}(w_1..w_{d−1})
  in log space (the paper's "Z by enumeration", which C(32,16) ≈ 6·10⁸ sets rule out).
- p_T(x) = Σ_{τ→x} P_F(τ): exactly, by dynamic programming over the 2^D subsets, when D ≤ 20
  (`exact_l1`); otherwise by Monte Carlo over P_B as the paper does (`estimate_l1`, see there).
"""
from __future__ import annotations

import math
from itertools import combinations

import torch

from divergence_tasks.policy_nets import MLPPolicy, masked_log_softmax, sample_actions
from gfnem_cli.engine.trajectories import Trajectories


class SetsTask:
    """D elements, sets of size N; `l1` is exact when D ≤ 20, Monte Carlo otherwise."""

    lr, lr_flows, anneal = 1e-3, 1e-1, True        # the paper's Adam settings (App. E)
    samples_per_input, eval_every = 128, 16

    def __init__(self, size: int = 32, set_size: int = 16, seed: int = 0,
                 eval_sets: int = 2048, eval_orders: int = 16, name: str | None = None,
                 threshold: float | None = None):
        self.D, self.N = size, set_size
        self.name = name or f"sets(D={size},N={set_size})"
        g = torch.Generator().manual_seed(seed)
        self.f = torch.rand(size, generator=g, dtype=torch.float64) * 2 - 1
        self.eval_sets, self.eval_orders = eval_sets, eval_orders
        self.threshold = 0.1 if threshold is None else threshold
        self._suffix = self._suffix_table()          # log e_k(w_d, …, w_{D−1})
        self.log_z_exact = float(self._suffix[0, set_size])

    # ------------------------------------------------------------------ target
    def _suffix_table(self) -> torch.Tensor:
        """E[d, k] = log e_k(w_d..w_{D−1}) (D+1, N+1): Z is E[0, N]; also drives exact sampling."""
        table = torch.full((self.D + 1, self.N + 1), float("-inf"), dtype=torch.float64)
        table[self.D, 0] = 0.0
        for d in range(self.D - 1, -1, -1):
            skip = table[d + 1]
            take = torch.cat([table.new_full((1,), float("-inf")), table[d + 1, :-1] + self.f[d]])
            table[d] = torch.logaddexp(skip, take)
        return table

    def log_reward(self, members: torch.Tensor) -> torch.Tensor:
        """(M, D) 0/1 membership -> (M,) log r(x) = Σ_{d∈x} f(d)."""
        return members.to(torch.float64) @ self.f

    def sample_target(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(num, D) sets drawn exactly from r/Z: element d is taken with probability
        w_d e_{k−1}(w_{d+1}..) / e_k(w_d..), k the number still to choose (batched over sets)."""
        members = torch.zeros(num, self.D, dtype=torch.bool)
        left = torch.full((num,), self.N, dtype=torch.long)
        for d in range(self.D):
            take = self.f[d] + self._suffix[d + 1, (left - 1).clamp(min=0)] - self._suffix[d, left]
            p = torch.where(left > 0, take.exp(), take.new_zeros(()))
            chosen = torch.rand(num, generator=generator, dtype=torch.float64) < p
            members[:, d] = chosen
            left = left - chosen.long()
        return members

    # ------------------------------------------------------------------ sampler
    def new_sampler(self, seed: int) -> MLPPolicy:
        torch.manual_seed(seed)
        return MLPPolicy(self.D, self.D)

    def sample(self, sampler: MLPPolicy, num_per_input: int,
               generator: torch.Generator | None = None) -> Trajectories:
        """num_per_input on-policy trajectories, all of length N (no padding, mask all True)."""
        m, f = num_per_input, self.f.float()
        state = torch.zeros(m, self.D)
        partial = torch.zeros(m)
        pf_steps, flows = [], [sampler.log_z.expand(m)]
        for t in range(self.N):
            logits, state_flow = sampler(state)
            if t > 0:                                 # forward-looking log F(s_t), DESIGN §3
                flows.append(partial + state_flow)
            log_p = masked_log_softmax(logits, state == 0)
            action = sample_actions(log_p, generator)
            pf_steps.append(log_p.gather(1, action[:, None]).squeeze(1))
            state = state.scatter(1, action[:, None], 1.0)
            partial = partial + f[action]
        log_reward = self.log_reward(state).float()
        flows.append(log_reward)
        log_pf_steps = torch.stack(pf_steps, dim=1)
        # P_B(s_t | s_{t+1}) = 1/(t+1): uniform over the t+1 elements of s_{t+1}.
        log_pb_steps = -torch.log(torch.arange(1, self.N + 1, dtype=torch.float32)).expand(m, -1)
        return Trajectories(
            log_pf=log_pf_steps.sum(1), log_pb=log_pb_steps.sum(1), log_reward=log_reward,
            num_inputs=1, num_per_input=m, log_pf_steps=log_pf_steps, log_pb_steps=log_pb_steps,
            log_flows=torch.stack(flows, dim=1), step_mask=torch.ones(m, self.N, dtype=torch.bool),
            behaviour_log_pf=log_pf_steps.sum(1).detach(), log_z=sampler.log_z.reshape(1),
            z=state.bool())

    def log_pf_of_orders(self, sampler: MLPPolicy, orders: torch.Tensor) -> torch.Tensor:
        """(M, N) element orders -> (M,) log P_F of those trajectories (teacher forcing)."""
        state = torch.zeros(orders.shape[0], self.D)
        total = torch.zeros(orders.shape[0])
        for t in range(orders.shape[1]):
            logits, _ = sampler(state)
            log_p = masked_log_softmax(logits, state == 0)
            total = total + log_p.gather(1, orders[:, t:t + 1]).squeeze(1)
            state = state.scatter(1, orders[:, t:t + 1], 1.0)
        return total

    # ------------------------------------------------------------------ L1
    def l1(self, sampler: MLPPolicy) -> float:
        return self.exact_l1(sampler) if self.D <= 20 else self.estimate_l1(sampler)

    def estimate_log_pt(self, sampler: MLPPolicy, members: torch.Tensor, orders: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """log p̂_T(x) = log mean_k P_F(τ_k)/P_B(τ_k|x), τ_k ~ P_B(·|x) (a uniform random
        order of x's elements): the paper's Monte Carlo over P_B, unbiased for p_T(x)."""
        m = members.shape[0]
        keys = torch.rand(m, orders, self.D, generator=generator)
        keys = keys.masked_fill(~members[:, None, :], 2.0)          # absent elements sort last
        perm = keys.argsort(dim=2)[:, :, :self.N].reshape(m * orders, self.N)
        log_pf = self.log_pf_of_orders(sampler, perm).double().view(m, orders)
        return torch.logsumexp(log_pf, dim=1) - math.log(orders) + math.lgamma(self.N + 1)

    @torch.no_grad()
    def estimate_l1(self, sampler: MLPPolicy, seed: int = 12345) -> float:
        """L1 = Σ_x |p_T − π| = E_{x~m}[|p_T(x) − π(x)| / m(x)] with m = (p_T + π)/2, half the
        sets drawn exactly from π, half from the sampler, so every term is ≤ 2 (bounded variance,
        where sampling x from π alone misses mass the sampler puts where π is small).
        p_T is replaced by p̂_T (`estimate_log_pt`, `eval_orders` orders per set); since |·| is
        convex this plug-in is biased upward by the Monte Carlo noise of p̂_T, and m uses p̂_T
        too. A fixed evaluation seed makes curves comparable across objectives."""
        g = torch.Generator().manual_seed(seed)
        half = self.eval_sets // 2
        from_target = self.sample_target(half, g)
        from_sampler = self.sample(sampler, half, generator=g).z
        members = torch.cat([from_target, from_sampler])
        log_pt = self.estimate_log_pt(sampler, members, self.eval_orders, g)
        log_pi = self.log_reward(members) - self.log_z_exact
        log_mix = torch.logaddexp(log_pt, log_pi) - math.log(2)
        return float(((log_pt - log_mix).exp() - (log_pi - log_mix).exp()).abs().mean())

    def all_sets(self) -> torch.Tensor:
        """(C(D, N), D) every set, for small sizes."""
        rows = torch.tensor(list(combinations(range(self.D), self.N)), dtype=torch.long)
        return torch.zeros(len(rows), self.D, dtype=torch.bool).scatter_(1, rows, True)

    @torch.no_grad()
    def exact_log_pt(self, sampler: MLPPolicy) -> tuple[torch.Tensor, torch.Tensor]:
        """(bitmask of each set, log p_T of each set): p(s') = Σ_{s→s'} p(s) P_F(s'|s), one
        batched policy call per level, over all C(D, k) subsets of size k (needs 2^D memory)."""
        bits = 1 << torch.arange(self.D)
        level = torch.zeros(1, dtype=torch.long)                    # bitmasks of level k
        log_p = torch.zeros(1, dtype=torch.float64)
        for _ in range(self.N):
            members = (level[:, None] & bits) != 0
            logits, _ = sampler(members.float())
            step = masked_log_softmax(logits, ~members).double()    # (S_k, D)
            child = (level[:, None] | bits).reshape(-1)
            contrib = (log_p[:, None] + step).reshape(-1)
            keep = ~members.reshape(-1)
            child, contrib = child[keep], contrib[keep]
            nxt, inverse = torch.unique(child, return_inverse=True)
            total = torch.zeros(len(nxt), dtype=torch.float64).index_add_(0, inverse, contrib.exp())
            level, log_p = nxt, total.log()
        return level, log_p

    def exact_l1(self, sampler: MLPPolicy) -> float:
        """Σ_x |p_T(x) − r(x)/Z| over every set, both terms exact (small sizes only)."""
        masks, log_pt = self.exact_log_pt(sampler)
        members = (masks[:, None] & (1 << torch.arange(self.D))) != 0
        log_pi = self.log_reward(members) - self.log_z_exact
        return float((log_pt.exp() - log_pi.exp()).abs().sum())
