"""Batched semiring contractions shared by the charts (Goodman 1999, "Semiring Parsing").

Every dynamic program over trees here is the same recursion read in a different semiring:
sum-product in log space gives the inside score (Baker 1979), max-plus gives Viterbi, and
the sampling semiring gives exact posterior trees (drawn top-down from the log chart).
This file holds the contractions those recursions need, written so that the dense work lands
in BLAS (log semiring) or stays within a memory budget (max semiring, which BLAS cannot do).
"""
from __future__ import annotations

import torch

# Elements of the largest temporary a max-plus contraction may build at once (~64 MiB fp32).
MAX_PLUS_CHUNK = 1 << 24


def scaled_matmul(x: torch.Tensor, w: torch.Tensor):
    """(P, xm, wm) such that log Σ_q exp(x[.., n, q] + w[.., q, r])
    = log P[.., n, r] + xm[.., n] + wm[.., r]: the log-semiring product as max-shifted
    exp -> matmul, never a broadcast logsumexp.

    Rows of x are shifted by their own max and columns of w by theirs, so both exponentials
    lie in [0, 1] with a 1 in every non-empty row/column. Callers that read only a few entries
    take the log of those alone. Meant for gradient-free uses (sampling tables); the inside
    chart keeps its own scaled form.
    """
    xm = _finite_max(x, dim=-1)
    wm = _finite_max(w, dim=-2)
    return torch.exp(x - xm.unsqueeze(-1)) @ torch.exp(w - wm.unsqueeze(-2)), xm, wm


def max_plus(x: torch.Tensor, w: torch.Tensor, chunk: int = MAX_PLUS_CHUNK) -> torch.Tensor:
    """max_q x[b, n, q] + w[b, r, q] -> (B, N, R); w may have batch size 1 (shared grammar).

    The max semiring has no BLAS kernel, so the (N, R, Q) candidate tensor is built explicitly,
    in chunks over N that keep it under `chunk` elements.
    """
    B, N, Q = x.shape
    R = w.shape[1]
    step = max(1, chunk // max(1, B * R * Q))
    outs = []
    for s in range(0, N, step):
        cand = x[:, s:s + step, None, :] + w[:, None, :, :]
        outs.append(cand.amax(dim=-1))
    return torch.cat(outs, dim=1) if outs else x.new_empty(B, 0, R)


def sample_categorical(logits: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """One exact draw per row from softmax(logits) over the last axis, by inverse CDF.

    One uniform per row (not per category, as the Gumbel-max trick needs); -inf logits have
    zero mass and are never drawn. Every row must hold at least one finite logit.
    """
    probs = torch.softmax(logits, dim=-1)
    cdf = probs.cumsum(-1)
    u = torch.rand(*logits.shape[:-1], 1, dtype=cdf.dtype, device=cdf.device,
                   generator=generator) * cdf[..., -1:]
    # the first category whose cumulative mass exceeds u: zero-mass ones never qualify
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)


def _finite_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """max along `dim` with -inf (empty) rows mapped to 0, so shifting never makes NaN."""
    m = x.amax(dim=dim)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))
