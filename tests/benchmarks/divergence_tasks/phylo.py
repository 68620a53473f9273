"""Phylogenetic inference (da Silva et al., 2024, §5.2; the task of Zhou et al., 2024,
PhyloGFN): rooted binary trees over S species, built bottom-up by joining two roots per step.

Data: one true tree (S − 1 uniformly random joins) and `sites` nucleotides per species,
simulated down it under JC69 with every branch of length 0.3 (the issue's "rate 0.3"), all drawn
from torch.Generator().manual_seed(seed). Reward: the tree likelihood by Felsenstein's pruning
with the same fixed branch lengths; the uniform prior over topologies is a constant, so R/Z is
the topology posterior over all (2S − 3)!! trees (10 395 for S = 7).

A state is a forest; each root sits in the slot of its smallest species, so a join is a pair of
slots (i < j), C(S, 2) actions, masked to pairs of live slots. P_B is uniform over splitting
one of the roots that are not leaves. Policy (`policy=`): "gin" (the default), the paper's
2-layer 64-unit GIN (policy_nets.GINPolicy) over the forest's nodes (leaves and joins, tree edges), each node
described by its Felsenstein partials normalised per site (a leaf: its one-hot sequence), so a
root's embedding summarises its subtree's data; or "mlp", a 2×64 MLP on the indicator of the
forest's clades (2^S bitmasks). Forward-looking flows take the log-likelihoods of the current
roots (each as its own tree) as the fixed part.
Exact p_T by dynamic programming over every forest (batched per level), so L1 is exact here,
where the paper estimates p_T by Monte Carlo over P_B.
"""
from __future__ import annotations

import math
from itertools import combinations

import torch
from torch import nn

from divergence_tasks.policy_nets import GINPolicy, MLPPolicy, masked_log_softmax, sample_actions
from gfnem_cli.engine.trajectories import Trajectories


def jc69(branch: float) -> torch.Tensor:
    """(4, 4) JC69 transition probabilities over a branch of `branch` substitutions per site."""
    same = 0.25 + 0.75 * math.exp(-4.0 * branch / 3.0)
    return torch.full((4, 4), (1.0 - same) / 3.0, dtype=torch.float64).fill_diagonal_(same)


class CladeMLP(MLPPolicy):
    """The MLP policy reading the forest as its clade indicators."""

    def forward(self, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(state["feats"])


class PhyloTask:
    lr, lr_flows, anneal = 1e-3, 1e-1, True        # the paper's Adam settings (App. E)
    samples_per_input, eval_every, threshold = 64, 32, 0.3   # exact L1 costs ~1 s

    def __init__(self, species: int = 7, sites: int = 25, branch: float = 0.3, seed: int = 0,
                 name: str | None = None, policy: str = "gin"):
        if policy not in ("gin", "mlp"):
            raise ValueError(f"policy must be 'gin' or 'mlp', not {policy!r}")
        self.S, self.sites, self.policy = species, sites, policy
        self.name = name or f"phylo(S={species},sites={sites})"
        self.P = jc69(branch)
        self.pairs = torch.tensor(list(combinations(range(species), 2)))     # (A, 2)
        g = torch.Generator().manual_seed(seed)
        self.data = self._simulate(g)                                        # (S, sites)
        self.leaf_partials = torch.nn.functional.one_hot(self.data, 4).double()   # (S, sites, 4)
        self.log_r_trees = self.exact(None)[2]               # every tree, in `exact`'s order
        self.log_z_exact = float(torch.logsumexp(self.log_r_trees, 0))

    def _simulate(self, g: torch.Generator) -> torch.Tensor:
        """Sequences at the leaves of a random tree: uniform root, JC69 down every branch."""
        nodes = [[k] for k in range(self.S)]                   # clades still to be joined
        joins = []
        while len(nodes) > 1:
            i, j = torch.randperm(len(nodes), generator=g)[:2].tolist()
            joins.append((nodes[i], nodes[j]))
            nodes = [n for k, n in enumerate(nodes) if k not in (i, j)] + [nodes[i] + nodes[j]]
        seqs = {tuple(sorted(nodes[0])): torch.randint(4, (self.sites,), generator=g)}
        for left, right in reversed(joins):                   # top-down
            parent = seqs[tuple(sorted(left + right))]
            for child in (left, right):
                probs = self.P[parent]                         # (sites, 4)
                seqs[tuple(sorted(child))] = torch.multinomial(probs, 1, generator=g).squeeze(1)
        return torch.stack([seqs[(k,)] for k in range(self.S)])

    # ------------------------------------------------------------------ shared state algebra
    def _site_log_lik(self, partials: torch.Tensor) -> torch.Tensor:
        """(..., sites, 4) partials -> (...,) Σ_sites log Σ_a π_a L[a], π uniform."""
        return (partials @ torch.full((4,), 0.25, dtype=torch.float64)).log().sum(-1)

    def _join(self, state: dict, action: torch.Tensor, fresh: bool = False) -> dict:
        """The forests after joining slots (i, j) of each row: new root in slot i (Felsenstein:
        L_parent = (L_i P^T)(L_j P^T) site-wise), slot j emptied, the new clade recorded; for the
        GIN, node S + (joins so far) is created with edges to the two old roots. `fresh`: the
        state's tensors are the caller's own copies, written in place."""
        state = state if fresh else {k: v.clone() for k, v in state.items()}
        L, clade, root = state["L"], state["clade"], state["root"]
        rows = torch.arange(len(action))
        i, j = self.pairs[action, 0], self.pairs[action, 1]
        parent = (L[rows, i] @ self.P.T) * (L[rows, j] @ self.P.T)
        node = 2 * self.S - (clade > 0).sum(1)                              # S + joins so far
        state["x"][rows, node] = (parent / parent.sum(-1, keepdim=True)).flatten(1).float()
        for child in (root[rows, i], root[rows, j]):
            state["adj"][rows, node, child] = 1.0
            state["adj"][rows, child, node] = 1.0
        root[rows, i] = node
        L[rows, i] = parent
        clade[rows, i] = clade[rows, i] | clade[rows, j]
        clade[rows, j] = 0
        state["feats"][rows, clade[rows, i]] = 1.0
        return state

    def _initial(self, m: int) -> dict:
        nodes = 2 * self.S - 1
        x = torch.zeros(m, nodes, self.sites * 4)
        x[:, :self.S] = self.leaf_partials.flatten(1).float()
        return {"L": self.leaf_partials.expand(m, -1, -1, -1).clone(),
                "clade": (1 << torch.arange(self.S)).expand(m, -1).clone(),
                "feats": torch.zeros(m, 1 << self.S), "x": x,
                "adj": torch.zeros(m, nodes, nodes), "root": torch.arange(self.S).expand(m, -1).clone()}

    def _allowed(self, clade: torch.Tensor) -> torch.Tensor:
        live = clade > 0
        return live[:, self.pairs[:, 0]] & live[:, self.pairs[:, 1]]

    def _roots_log_lik(self, state: dict) -> torch.Tensor:
        """Σ over live roots of their own log-likelihood: the fixed part of log F(s)."""
        return torch.where(state["clade"] > 0, self._site_log_lik(state["L"]), 0.0).sum(1)

    # ------------------------------------------------------------------ sampler
    def new_sampler(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.policy == "gin":
            return GINPolicy(self.sites * 4, self.pairs)
        return CladeMLP(1 << self.S, len(self.pairs))

    def sample(self, sampler: nn.Module, num_per_input: int,
               generator: torch.Generator | None = None) -> Trajectories:
        """num_per_input on-policy trajectories, all of S − 1 joins."""
        m, steps = num_per_input, self.S - 1
        state = self._initial(m)
        pf_steps, pb_steps, flows = [], [], [sampler.log_z.expand(m)]
        for t in range(steps):
            logits, state_flow = sampler(state)
            if t > 0:
                flows.append(self._roots_log_lik(state).float() + state_flow)
            log_p = masked_log_softmax(logits, self._allowed(state["clade"]))
            action = sample_actions(log_p, generator)
            pf_steps.append(log_p.gather(1, action[:, None]).squeeze(1))
            state = self._join(state, action)
            internal = ((state["clade"] > 0) & (state["clade"] & (state["clade"] - 1) > 0)).sum(1)
            pb_steps.append(-internal.double().log().float())      # uniform over splittable roots
        log_reward = self._site_log_lik(state["L"][:, 0]).float()     # the root is in slot 0
        flows.append(log_reward)
        log_pf_steps, log_pb_steps = torch.stack(pf_steps, 1), torch.stack(pb_steps, 1)
        return Trajectories(
            log_pf=log_pf_steps.sum(1), log_pb=log_pb_steps.sum(1), log_reward=log_reward,
            num_inputs=1, num_per_input=m, log_pf_steps=log_pf_steps, log_pb_steps=log_pb_steps,
            log_flows=torch.stack(flows, 1), step_mask=torch.ones(m, steps, dtype=torch.bool),
            behaviour_log_pf=log_pf_steps.sum(1).detach(), log_z=sampler.log_z.reshape(1),
            z=state["feats"].bool())

    # ------------------------------------------------------------------ exact distributions
    @torch.no_grad()
    def exact(self, sampler: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clade indicators of every tree, log p_T, log R): p(s') = Σ_{s→s'} p(s) P_F(s'|s),
        children of one level deduplicated by their clade set (which identifies a forest).
        sampler None: a uniform P_F (to enumerate the trees and their rewards)."""
        state, log_p = self._initial(1), torch.zeros(1, dtype=torch.float64)
        width = min(32, 1 << self.S)                           # clade bits packed per int64
        weights = 1 << torch.arange(width, dtype=torch.long)
        for t in range(self.S - 1):
            allowed = self._allowed(state["clade"])
            last = t == self.S - 2                               # two roots: one join, P_F = 1
            logits = torch.zeros(allowed.shape) if sampler is None or last else sampler(state)[0]
            step = masked_log_softmax(logits, allowed).double()
            parent, action = allowed.nonzero(as_tuple=True)
            child = self._join({k: v[parent] for k, v in state.items()}, action, fresh=True)
            key = (child["feats"].long().view(len(parent), -1, width) * weights).sum(-1)
            uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
            probs = (log_p[parent] + step[parent, action]).exp()
            log_p = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, probs).log()
            first = torch.full((len(uniq),), len(parent)).scatter_reduce(
                0, inverse, torch.arange(len(parent)), reduce="amin")
            state = {k: v[first] for k, v in child.items()}
        return state["feats"].bool(), log_p, self._site_log_lik(state["L"][:, 0])

    def l1(self, sampler: nn.Module) -> float:
        """Σ_trees |p_T − R/Z| over every tree, both exact."""
        _, log_pt, log_r = self.exact(sampler)
        return float((log_pt.exp() - torch.softmax(log_r, 0)).abs().sum())

    def describe(self) -> str:
        """How peaked the posterior is: its entropy against the uniform one's, the top tree's mass."""
        post = torch.softmax(self.log_r_trees, 0).sort(descending=True).values
        entropy = float(-(post * post.log()).sum())
        cover = int((post.cumsum(0) < 0.9).sum()) + 1
        return (f"posterior entropy {entropy:.2f} nats (uniform: {math.log(len(post)):.2f}); top "
                f"tree {float(post[0]):.3f}; {cover} of {len(post)} trees hold 90%; "
                f"log Z {self.log_z_exact:.2f}")
