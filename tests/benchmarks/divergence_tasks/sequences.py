"""Sequence generation (da Silva et al., 2024, §5.2): sequences of 1..N tokens out of D, built
by appending a token per step and closed by an end token.

The state graph is a tree (autoregressive appending), so P_B = 1 and p_T(x) = P_F(x): the
sampler's marginal is exact by enumerating every prefix, no Monte Carlo needed. A trajectory
to a sequence of n tokens has n + 1 steps (the last one "end"; forced at n = N); the empty
sequence is not an object (end is refused at the empty state), so there are Σ_{n=1}^{N} D^n
objects (299 592 for D = 8, N = 6).

Reward: log r(x) = Σ_i g(i) f(x_i) with f(d) ~ N(0, 1) (d < D) then g(i) ~ Uniform(0, 1)
(i < N), drawn in that order from torch.Generator().manual_seed(seed) (seed 0 by default): the
paper does not give f, g, so this is our choice. `reward_scale` s multiplies log r (f ~ N(0, s²),
same draws): a larger s makes a peakier, harder target (`describe` measures how peaked). Z factorises over lengths and positions:
Z = Σ_{n=1}^{N} Π_{i<n} Σ_d e^{g(i) f(d)}.
"""
from __future__ import annotations

import math

import torch

from divergence_tasks.policy_nets import MLPPolicy, masked_log_softmax, sample_actions
from gfnem_cli.engine.trajectories import Trajectories


class SequencesTask:
    """D tokens, lengths 1..N; features are one-hot per position (D tokens + blank)."""

    lr, lr_flows, anneal = 1e-3, 1e-1, True        # the paper's Adam settings (App. E)
    samples_per_input, eval_every, threshold = 128, 16, 0.1

    def __init__(self, vocab: int = 8, max_len: int = 6, seed: int = 0, name: str | None = None,
                 reward_scale: float = 1.0):
        self.D, self.N, self.end = vocab, max_len, vocab
        self.name = name or f"sequences(D={vocab},N={max_len})"
        g = torch.Generator().manual_seed(seed)
        self.f = torch.randn(vocab, generator=g, dtype=torch.float64) * reward_scale
        self.g = torch.rand(max_len, generator=g, dtype=torch.float64)
        per_position = torch.logsumexp(self.g[:, None] * self.f[None, :], dim=1)   # (N,)
        self.log_z_exact = float(torch.logsumexp(per_position.cumsum(0), dim=0))

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, N) tokens, blank = D past the end -> (M, N·(D+1)) one-hot."""
        return torch.nn.functional.one_hot(tokens, self.D + 1).flatten(1).float()

    def log_reward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, N) tokens (blank = D) -> (M,) Σ_i g(i) f(x_i) over the real tokens."""
        f = torch.cat([self.f, self.f.new_zeros(1)])                  # blank contributes 0
        return (f[tokens] * self.g).sum(dim=1)

    # ------------------------------------------------------------------ sampler
    def new_sampler(self, seed: int) -> MLPPolicy:
        torch.manual_seed(seed)
        return MLPPolicy(self.N * (self.D + 1), self.D + 1)

    def _allowed(self, length: torch.Tensor) -> torch.Tensor:
        """(M, D+1): tokens while length < N, end once length ≥ 1."""
        tokens_ok = (length < self.N)[:, None].expand(-1, self.D)
        return torch.cat([tokens_ok, (length >= 1)[:, None]], dim=1)

    def sample(self, sampler: MLPPolicy, num_per_input: int,
               generator: torch.Generator | None = None) -> Trajectories:
        """num_per_input on-policy trajectories, padded to T = N + 1 steps, `step_mask` prefix."""
        m, steps = num_per_input, self.N + 1
        tokens = torch.full((m, self.N), self.D, dtype=torch.long)
        length = torch.zeros(m, dtype=torch.long)
        done = torch.zeros(m, dtype=torch.bool)
        partial = torch.zeros(m)
        f, g = self.f.float(), self.g.float()
        pf_steps, masks, flows = [], [], [sampler.log_z.expand(m)]
        for t in range(steps):
            logits, state_flow = sampler(self.features(tokens))
            if t > 0:                                 # forward-looking log F(s_t), DESIGN §3
                flows.append(partial + state_flow)
            log_p = masked_log_softmax(logits, self._allowed(length))
            action = sample_actions(log_p, generator)
            live = ~done
            pf_steps.append(torch.where(live, log_p.gather(1, action[:, None]).squeeze(1), 0.0))
            masks.append(live)
            append = live & (action != self.end)
            pos = length.clamp(max=self.N - 1)
            tokens = torch.where(append[:, None] & (torch.arange(self.N) == pos[:, None]),
                                 action[:, None], tokens)
            partial = partial + torch.where(append, g[pos] * f[action.clamp(max=self.D - 1)], 0.0)
            length = length + append.long()
            done = done | (live & (action == self.end))
        log_reward = self.log_reward(tokens).float()
        flows.append(torch.zeros(m))
        log_flows = torch.stack(flows, dim=1)
        # the terminal state (after "end") is column length + 1; it holds log R
        log_flows = log_flows.scatter(1, (length + 1)[:, None], log_reward[:, None])
        log_pf_steps = torch.stack(pf_steps, dim=1)
        log_pf = log_pf_steps.sum(1)
        return Trajectories(
            log_pf=log_pf, log_pb=torch.zeros(m), log_reward=log_reward, num_inputs=1,
            num_per_input=m, log_pf_steps=log_pf_steps, log_pb_steps=torch.zeros(m, steps),
            log_flows=log_flows, step_mask=torch.stack(masks, dim=1),
            behaviour_log_pf=log_pf.detach(), log_z=sampler.log_z.reshape(1), z=tokens)

    # ------------------------------------------------------------------ exact distributions
    def all_sequences(self) -> torch.Tensor:
        """(X, N) every object, ordered by length then lexicographically, blank-padded."""
        out = []
        for n in range(1, self.N + 1):
            grid = torch.cartesian_prod(*[torch.arange(self.D)] * n) if n > 1 \
                else torch.arange(self.D)[:, None]
            out.append(torch.cat([grid, torch.full((len(grid), self.N - n), self.D)], dim=1))
        return torch.cat(out)

    def exact_target(self) -> torch.Tensor:
        """(X,) r(x)/Z over `all_sequences()`."""
        return (self.log_reward(self.all_sequences()) - self.log_z_exact).exp()

    @torch.no_grad()
    def exact_log_pt(self, sampler: MLPPolicy) -> torch.Tensor:
        """(X,) log P_F(x) over `all_sequences()`, one batched policy call per prefix length:
        log P(prefix + token) = log P(prefix) + log P_F(token | prefix), then the end step."""
        prefixes = torch.full((1, self.N), self.D, dtype=torch.long)   # all prefixes of n tokens
        log_p = torch.zeros(1, dtype=torch.float64)
        out = []
        for n in range(self.N):
            logits, _ = sampler(self.features(prefixes))
            allowed = self._allowed(torch.full((len(prefixes),), n))
            step = masked_log_softmax(logits, allowed).double()
            if n >= 1:
                out.append(log_p + step[:, self.end])                 # objects of length n
            log_p = (log_p[:, None] + step[:, :self.D]).reshape(-1)   # prefix-major order
            prefixes = prefixes.repeat_interleave(self.D, dim=0)
            prefixes[:, n] = torch.arange(self.D).repeat(len(prefixes) // self.D)
        out.append(log_p)                                             # length N: end forced
        return torch.cat(out)

    def l1(self, sampler: MLPPolicy) -> float:
        """Σ_x |P_F(x) − r(x)/Z| over all Σ_n D^n sequences, both terms exact."""
        return float((self.exact_log_pt(sampler).exp() - self.exact_target()).abs().sum())

    def describe(self) -> str:
        """How peaked the target is: its entropy against the uniform one's, its top sequences' mass."""
        target = self.exact_target().sort(descending=True).values
        entropy = float(-(target * target.log()).sum())
        cover = int((target.cumsum(0) < 0.5).sum()) + 1
        return (f"target entropy {entropy:.2f} nats (uniform: {math.log(len(target)):.2f}); top "
                f"100 hold {float(target[:100].sum()):.3f}; {cover} of {len(target)} hold 50%; "
                f"range of f {float(self.f.min()):.2f}..{float(self.f.max()):.2f}")
