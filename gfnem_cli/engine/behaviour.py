"""The behaviour policy every GFlowNet sampler draws its actions from (DESIGN.md §4).

One function for both families: given a row of action logits and the legal actions, sample
from q = (1−ε)·softmax(logits / T) + ε·uniform(legal) — the tempered, ε-uniform exploration
of Hu et al. (2023) — while returning the log-probability of the chosen action under the
untempered policy π = softmax(logits) as well, since the objectives train π and importance
weights need q. q = π exactly when T = 1 and ε = 0. T = 0 is the limit T → 0: the most
probable legal action (ties to the lowest index), the greedy draws of the paper's decoder
updates; then log q = 0 for it when ε = 0.
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import row_noise

NEG = -1e9   # the logit of an illegal action: exp underflows to 0, sums stay finite


def choose(logits: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0,
           epsilon: float = 0.0, forced: torch.Tensor | None = None,
           generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One action per row: (action, log π(action), log q(action)).

    `mask` (same shape as logits, bool) marks the legal actions (None: all legal). `forced`
    gives the actions instead of sampling (teacher forcing; negative entries, a caller's
    padding, read as 0); both log-probs are still returned for them. A row with no legal
    action returns action 0 and finite garbage: the caller masks it. `uniforms` (rows,): draw
    by inverse CDF from these instead of from `generator` (`row_noise.py`: the same action
    however the batch is split or padded).
    """
    if mask is not None:
        logits = logits.masked_fill(~mask, NEG)
    log_pi = torch.log_softmax(logits, dim=-1)
    if temperature == 1.0 and epsilon == 0.0:
        log_q = log_pi
    else:
        if temperature == 0.0:
            q = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        else:
            q = torch.softmax(logits / temperature, dim=-1)
        if epsilon > 0.0:
            legal = torch.ones_like(q) if mask is None else mask.to(q.dtype)
            q = (1.0 - epsilon) * q + epsilon * legal / legal.sum(-1, keepdim=True).clamp(min=1.0)
        log_q = torch.log(q.clamp(min=1e-38))
        if mask is not None:
            log_q = log_q.masked_fill(~mask, NEG)
    if forced is None and uniforms is not None:
        action = row_noise.inverse_cdf(log_q.detach(), uniforms)
    elif forced is None:
        with torch.no_grad():
            probs = torch.softmax(log_q.detach(), dim=-1)
            action = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    else:
        action = forced.clamp(min=0)
    pick = action.unsqueeze(-1)
    return action, log_pi.gather(-1, pick).squeeze(-1), log_q.gather(-1, pick).squeeze(-1)
