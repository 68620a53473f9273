"""Batched semiring contractions shared by the charts (Goodman 1999, "Semiring Parsing").

Every dynamic program over trees here is the same recursion read in a different semiring:
sum-product in log space gives the inside score (Baker 1979), max-plus gives Viterbi, and
the sampling semiring gives exact posterior trees (drawn top-down from the log chart).
This file holds the contractions those recursions need, written so that the dense work lands
in BLAS (log semiring) or in a blocked running maximum that stays in cache (max semiring,
which BLAS cannot do).
"""
from __future__ import annotations

import torch

# Output elements of one block of a max-plus contraction (1 MiB in float32: it stays in L2).
MAX_PLUS_CHUNK = 1 << 18


def scaled_matmul(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None):
    """(P, xm, wm) such that log Σ_q exp(x[.., n, q] + w[.., q, r])
    = log P[.., n, r] + xm[.., n] + wm[.., r]: the log-semiring product as max-shifted
    exp -> matmul, never a broadcast logsumexp.

    Rows of x are shifted by their own max and columns of w by theirs, so both exponentials
    lie in [0, 1] with a 1 in every non-empty row/column. Callers that read only a few entries
    take the log of those alone. Meant for gradient-free uses (sampling tables); the inside
    chart keeps its own scaled form. 2-D operands run as one GEMM with x as a transposed view
    (MKL's faster orientation for a short q), written into `out` when given: a large table
    allocated afresh costs more in page faults than the GEMM itself (issue 17).
    """
    xm = _finite_max(x, dim=-1)
    wm = _finite_max(w, dim=-2)
    ex, ew = torch.exp(x - xm.unsqueeze(-1)), torch.exp(w - wm.unsqueeze(-2))
    if x.dim() == 2 and w.dim() == 2:
        return torch.mm(ex.T.contiguous().T, ew, out=out), xm, wm
    if out is None:
        return ex @ ew, xm, wm
    return torch.matmul(ex, ew, out=out), xm, wm


def max_plus(x: torch.Tensor, w: torch.Tensor, chunk: int = MAX_PLUS_CHUNK) -> torch.Tensor:
    """max_q x[b, n, q] + w[b, r, q] -> (B, N, R); w may have batch size 1 (shared grammar)."""
    return max_plus_contract(x, w.transpose(1, 2).contiguous()[:, None], chunk)


def max_plus_contract(vecs: torch.Tensor, mats: torch.Tensor, chunk: int = MAX_PLUS_CHUNK
                      ) -> torch.Tensor:
    """out[..., r] = max_q vecs[..., q] + mats[..., q, r], for vecs (B, N, ..., Q) and mats
    (B', N', ..., Q, R) whose leading axes broadcast (sizes 1 or equal).

    The max semiring has no BLAS kernel. A running maximum over q on blocks of rows (axis 1)
    whose output fits in cache costs one add and one max per term and never builds the
    (…, Q, R) candidate tensor that an `amax` would reduce: 10-25x faster (issue 17), and
    exact (the same float sums, compared)."""
    return _blocked_max(vecs, mats, chunk, q_first=False)


def max_plus_qfirst(vecs: torch.Tensor, mats: torch.Tensor, chunk: int = MAX_PLUS_CHUNK
                    ) -> torch.Tensor:
    """`max_plus_contract` with q the first axis of mats, (Q, B', N', ..., R): each term then
    reads one slab of mats, ~3x faster than rows of R strided by Q·R."""
    return _blocked_max(vecs, mats, chunk, q_first=True)


def _blocked_max(vecs, mats, chunk, q_first):
    Q, R = (mats.shape[0] if q_first else mats.shape[-2]), mats.shape[-1]
    lead = torch.broadcast_shapes(vecs.shape[:-1], mats.shape[1:-1] if q_first
                                  else mats.shape[:-2])
    out = vecs.new_empty(*lead, R)
    if Q == 0:
        return out.fill_(float("-inf"))
    rows = max(1, chunk // max(1, out[:, :1].numel()))
    tmp = vecs.new_empty(out[:, :rows].shape)
    row_axis = 2 if q_first else 1
    for s in range(0, lead[1], rows):
        o = out[:, s:s + rows]
        v = vecs[:, s:s + rows] if vecs.shape[1] > 1 else vecs
        m = mats.narrow(row_axis, s, o.shape[1]) if mats.shape[row_axis] > 1 else mats
        t = tmp[:, :o.shape[1]]
        for q in range(Q):
            term = m[q] if q_first else m[..., q, :]
            torch.add(v[..., q, None], term, out=o if q == 0 else t)
            if q:
                torch.maximum(o, t, out=o)
    return out


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
