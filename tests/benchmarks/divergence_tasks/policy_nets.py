"""The policy network of the paper's Sets and Sequences tasks: a 2×64 LeakyReLU MLP.

da Silva et al. (2024, App. E) use a two-layer, 64-unit MLP with LeakyReLU for these tasks. One
torso feeds two heads: the forward-policy logits and a scalar state flow f_φ(s) (only used by
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


def masked_log_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log-softmax over the allowed actions; disallowed ones get -inf (and no gradient)."""
    return torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)


def sample_actions(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(M,) one action per row drawn from exp(log_probs), without a Python loop over rows."""
    return torch.multinomial(log_probs.detach().exp(), 1, generator=generator).squeeze(1)
