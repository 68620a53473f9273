"""The policy networks of the paper's tasks: a 2×64 LeakyReLU MLP (Sets, Sequences) and a
2-layer, 64-unit GIN over the forest (Phylogenetics).

da Silva et al. (2024, App. E) use a two-layer, 64-unit MLP with LeakyReLU for Sets and Sequences.
One torso feeds two heads: the forward-policy logits and a scalar state flow f_φ(s) (only used by
SubTB/DB, as the learned part of a forward-looking log F(s), DESIGN.md §3). log Z is a separate
scalar, because the paper trains it with its own learning rate (1e-1 against 1e-3).
"""
from __future__ import annotations

import torch
from torch import nn


class MLPPolicy(nn.Module):
    """state features (M, in_dim) -> (action logits (M, A), state flow (M,)); plus log Z."""

    def __init__(self, in_dim: int, num_actions: int, hidden: int = 64):
        super().__init__()
        self.torso = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(),
                                   nn.Linear(hidden, hidden), nn.LeakyReLU())
        self.action_head = nn.Linear(hidden, num_actions)
        self.state_head = nn.Linear(hidden, 1)
        self.log_z = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.torso(features)
        return self.action_head(h), self.state_head(h).squeeze(-1)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(policy and state-flow parameters, [log Z]): the paper's two learning rates."""
        return [p for n, p in self.named_parameters() if n != "log_z"], [self.log_z]


class GINPolicy(nn.Module):
    """A graph isomorphism network (Xu et al., ICLR 2019, eq. 4.1: h' = MLP((1 + ε)·h + Σ_{u∈N(v)} h_u),
    ε learned) over a forest, for the Phylogenetics task (da Silva et al., 2024, App. E: 2 layers,
    64 units). Node features come in per node; each slot's root embedding scores the joins: the
    logit of joining slots (i, j) is an MLP of (r_i + r_j, r_i ⊙ r_j), symmetric in i and j.
    The state flow is a linear map of the sum of the live roots' embeddings (permutation
    invariant, so two orders of joins reaching one forest get one flow and one policy).
    Each MLP normalises its hidden layers per node (LayerNorm, where Xu et al. use BatchNorm,
    which would make a state's policy depend on its batch): without it the policy collapsed
    onto a few trees within 100 steps (reverse KL: L1 1.91 at 512 steps; the MLP 1.19).
    Dense adjacency, batched with bmm: forests have at most 2S − 1 nodes."""

    def __init__(self, node_dim: int, pairs: torch.Tensor, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.register_buffer("pairs", pairs, persistent=False)
        self.embed = nn.Linear(node_dim, hidden)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden),
                                                nn.ReLU(), nn.Linear(hidden, hidden),
                                                nn.LayerNorm(hidden), nn.ReLU())
                                  for _ in range(layers))
        self.eps = nn.Parameter(torch.zeros(layers))
        # the pair MLP's first layer on (r_i + r_j, r_i ⊙ r_j), split so the sum part is applied
        # per root (S rows) rather than per pair (A rows)
        self.pair_sum, self.pair_prod = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden, bias=False)
        self.pair_out = nn.Linear(hidden, 1)
        self.state_head = nn.Linear(hidden, 1)
        self.log_z = nn.Parameter(torch.zeros(()))

    def forward(self, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """state: "x" (M, V, F) node features, "adj" (M, V, V) 0/1, "root" (M, S) the node
        index of each slot's root, "clade" (M, S) (0 = empty slot) -> ((M, A) logits, (M,) flow).
        Nodes not yet created have no edges, so they never reach a root."""
        h = self.embed(state["x"])
        for k, mlp in enumerate(self.mlps):
            h = mlp((1 + self.eps[k]) * h + torch.bmm(state["adj"], h))
        roots = h.gather(1, state["root"][:, :, None].expand(-1, -1, h.shape[-1]))   # (M, S, H)
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        u = self.pair_sum.weight @ roots.transpose(1, 2)                            # (M, H, S)
        hidden = u[:, :, i] + u[:, :, j] + self.pair_sum.bias[:, None]              # (M, H, A)
        hidden = hidden + self.pair_prod(roots[:, i] * roots[:, j]).transpose(1, 2)
        logits = self.pair_out(torch.relu(hidden).transpose(1, 2)).squeeze(-1)
        live = (state["clade"] > 0).unsqueeze(-1).to(h.dtype)
        return logits, self.state_head((roots * live).sum(1)).squeeze(-1)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return [p for n, p in self.named_parameters() if n != "log_z"], [self.log_z]


def masked_log_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log-softmax over the allowed actions; disallowed ones get -inf (and no gradient)."""
    return torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)


def sample_actions(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(M,) one action per row drawn from exp(log_probs), without a Python loop over rows."""
    return torch.multinomial(log_probs.detach().exp(), 1, generator=generator).squeeze(1)
