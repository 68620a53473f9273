"""The log-probabilities of a PCFG in Chomsky normal form, as every dynamic program reads them.

Symbols: NT nonterminals then T preterminals, S = NT + T; children index the joint axis S,
nonterminals first. All entries are log-probabilities (normalized by the model):
  roots  (B, NT)         log p(root = A)
  rules  (B, NT, S, S)   log p(A -> B C)
  terms  (B, n, T)       log p(word_i | preterminal t), gathered from one (T, V) emission
                         table per batch; positions past a sentence's length are ignored
  lengths (B,)           sentence lengths (>= 1)
A shared grammar (the neural PCFG) passes `rules` expanded over B without copying.

The helpers every chart reads them through: `check_lengths` (validated lengths),
`masked_terms` (finite filler past each sentence), `shared_rules` (the one table of a shared
grammar, whose gradient is not copied B times).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gfnem_cli.engine.device_checks import expect


@dataclass
class PCFGParams:
    roots: torch.Tensor
    rules: torch.Tensor
    terms: torch.Tensor
    lengths: torch.Tensor

    @property
    def num_nonterminals(self) -> int:
        return self.rules.shape[1]

    @property
    def num_preterminals(self) -> int:
        return self.terms.shape[2]

    @property
    def batch_size(self) -> int:
        return self.terms.shape[0]

    @property
    def max_length(self) -> int:
        return self.terms.shape[1]


def batch_rows(params: PCFGParams, start: int, stop: int) -> PCFGParams:
    """Sentences start..stop-1 of a batch: for the charts that bound memory by chunking it."""
    return PCFGParams(params.roots[start:stop], params.rules[start:stop],
                      params.terms[start:stop], params.lengths[start:stop])


def shared_rules(rules: torch.Tensor) -> torch.Tensor | None:
    """The (NT, S, S) table when every row of `rules` is one shared grammar, else None.

    A neural PCFG passes one grammar `expand`ed over the batch. Reading it once lets each
    width run one GEMM for the whole batch, and the backward pass must not materialize B
    copies of the rule gradient (which indexing the expanded view would do).
    """
    if rules.shape[0] != 1 and rules.stride(0) != 0:
        return None
    return _SharedRows.apply(rules) if rules.requires_grad else rules[0]


class _SharedRows(torch.autograd.Function):
    """rules[0] of a stride-0 batch; the gradient comes back as g/B on every (aliased) row,
    a stride-0 tensor that `expand`'s backward sums to g without allocating B copies."""

    @staticmethod
    def forward(ctx, rules):
        ctx.batch = rules.shape[0]
        return rules[0].clone()

    @staticmethod
    def backward(ctx, grad):
        return (grad / ctx.batch).unsqueeze(0).expand(ctx.batch, *grad.shape)


def check_lengths(params: PCFGParams) -> torch.Tensor:
    """Sentence lengths on the chart's device, validated against the padded width."""
    lengths = params.lengths.to(params.terms.device).long()
    if lengths.numel():
        expect((lengths >= 1) & (lengths <= params.max_length),
               lambda: f"sentence lengths must lie in [1, {params.max_length}], "
                       f"got {lengths.tolist()}")
    return lengths


def masked_terms(params: PCFGParams, lengths: torch.Tensor) -> torch.Tensor:
    """Emission log-probs with positions past each sentence set to 0: finite filler, so the
    (unused) cells beyond a sentence never produce NaN, in the forward or backward pass."""
    live = torch.arange(params.max_length, device=lengths.device)[None, :] < lengths[:, None]
    return torch.where(live[..., None], params.terms,
                       torch.zeros((), dtype=params.terms.dtype, device=params.terms.device))
