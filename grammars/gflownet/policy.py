"""Heads on the encoded forest: forward (position, label), backward, log-flows and log Z.

Forward action = (position, label), factorized as P_F(i, A | s) = P(i | s) · P(A | s, i):
a position head scores every adjacent pair [h_i; h_{i+1}], then a label head reads the chosen
pair. Factorizing keeps the label softmax small (NT, not (R-1)·NT) and lets exploration mix
each factor separately (`gfnem_cli.engine.behaviour.choose`). The backward head scores
splittable roots (learned P_B).
Log-flows are forward-looking sums of per-root contributions plus a summary-token term, so
they scale with the number of roots; the conditional log Z_φ(x) head has the same form and
reads the initial state s_0 (only the words).
"""
from __future__ import annotations

import torch
from torch import nn

# Finite "minus infinity": rows with nothing valid stay finite, so masked-out rows never put
# NaN into a backward pass (NaN * 0 is still NaN).


class PolicyHeads(nn.Module):
    def __init__(self, d_model: int, num_nonterminals: int, learn_backward: bool):
        super().__init__()
        self.pair = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU())
        self.position = nn.Linear(d_model, 1)
        self.label = nn.Linear(d_model, num_nonterminals)
        self.backward = nn.Linear(d_model, 1) if learn_backward else None
        self.flow_root = nn.Linear(d_model, 1)
        self.flow_summary = nn.Linear(d_model, 1)
        self.log_z_root = nn.Linear(d_model, 1)
        self.log_z_summary = nn.Linear(d_model, 1)

    def pairs(self, h: torch.Tensor) -> torch.Tensor:
        """(M, R, d) -> (M, R-1, d): one feature per adjacent pair of roots."""
        return self.pair(torch.cat([h[:, :-1], h[:, 1:]], dim=-1))

    def position_logits(self, pair: torch.Tensor) -> torch.Tensor:
        return self.position(pair).squeeze(-1)

    def label_logits(self, pair_at_pos: torch.Tensor) -> torch.Tensor:
        return self.label(pair_at_pos)

    def backward_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.backward(h).squeeze(-1)

    def log_flow(self, h: torch.Tensor, summary: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """f_φ(s): the learned part of log F(s) (the caller adds the rewards s already fixes)."""
        per_root = self.flow_root(h).squeeze(-1) * mask
        return per_root.sum(1) + self.flow_summary(summary).squeeze(-1)

    def log_z(self, h: torch.Tensor, summary: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_root = self.log_z_root(h).squeeze(-1) * mask
        return per_root.sum(1) + self.log_z_summary(summary).squeeze(-1)


