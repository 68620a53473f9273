"""The scaled inside chart: the forward recursion of `inside.py`, one step per span width.

Kept apart from the autograd wiring (inside.py) and the outside pass (outside.py) that reads
what it leaves: the chart in two layouts, the per-width split scales, the leaf tables, and the
NT·NT outer sums X, kept so that the backward does not rebuild them (a batched rank-K GEMM per
width, the slowest kernel of the pass; costs B·Σ_w (n-w+1)·NT² floats).
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Chart(NamedTuple):
    CL: torch.Tensor   # (B, n, n+1, NT)  E of cell (i, i+w) at [i, w]
    CR: torch.Tensor   # (B, n+1, n+1, NT) E of cell (j-w, j) at [j, n-w]
    ML: torch.Tensor   # (B, n, n+1)      log-scale m, same layouts
    MR: torch.Tensor   # (B, n+1, n+1)
    SC: torch.Tensor   # (B, n, n+1)      per-cell normalizer s (E = Y / s)
    U: torch.Tensor    # (n, B, NT, NT)   left leaf at i:  Σ_t e_i[t] P[A,t,C]
    V: torch.Tensor    # (n, B, NT, NT)   right leaf at j: Σ_u P[A,B,u] e_j[u]
    W: torch.Tensor    # (n, B, NT, T)    right leaf of a width-2 span: Σ_u P[A,t,u] e_j[u]
    # (position-major, so the rows of one width are a contiguous block for batched matvecs)
    w_leaf: tuple      # the three (…, T, ·) rule matrices U, V, W were made from
    nn_w: torch.Tensor  # (…, NT·NT, NT)   NT·NT rule block as a GEMM operand
    RU: torch.Tensor   # (n, B, n+1, NT) right child of the k=1 split, scaled: [i, :, w]
    LV: torch.Tensor   # (n, B, n+1, NT) left child of the k=w-1 split, scaled: [j, :, w]
    scales: list       # per width w >= 3: exp(first - M), exp(last - M), exp(mid - M) and
                       # X = Σ_k left ⊗ right (B, Pw, NT, NT), the last two None at w = 3


def _split_rules(P: torch.Tensor, NT: int):
    """The four CNF blocks of P laid out as GEMM operands."""
    T = P.shape[-1] - NT
    lead = P.shape[:-3]
    w_tn = P[..., NT:, :NT].movedim(-2, -3).reshape(*lead, T, NT * NT)   # [t, (A, C)]
    w_nt = P[..., :NT, NT:].movedim(-1, -3).reshape(*lead, T, NT * NT)   # [u, (A, B)]
    w_tt = P[..., NT:, NT:].movedim(-1, -3).reshape(*lead, T, NT * T)    # [u, (A, t)]
    nn_w = P[..., :NT, :NT].reshape(*lead, NT, NT * NT).transpose(-1, -2)  # [(B, C), A]
    return (w_tn, w_nt, w_tt), nn_w


def _splits(ML, MR, mt, rshift, w, n):
    """Per-(span, split) log-scales of width w (children's scales + the rule block's shift)
    and their common max M per span (all detached)."""
    Pw = n - w + 1
    if w == 2:
        return None, None, None, mt[:, :Pw] + mt[:, 1:] + rshift[:, 3:4]
    first = mt[:, :Pw] + ML[:, 1:1 + Pw, w - 1] + rshift[:, 2:3]      # k = 1: leaf · NT
    last = ML[:, :Pw, w - 1] + mt[:, w - 1:] + rshift[:, 1:2]         # k = w-1: NT · leaf
    M = torch.maximum(first, last)
    mid = None
    if w >= 4:                                                         # k = 2..w-2: NT · NT
        mid = ML[:, :Pw, 2:w - 1] + MR[:, w:, n - w + 2:n - 1] + rshift[:, 0:1, None]
        M = torch.maximum(M, mid.amax(-1))
    return first, last, mid, M


def _nn_contract(X, nn_w):
    """Σ_{B,C} X[b,p,B,C] P[A,B,C] -> (B, Pw, NT); one GEMM when the grammar is shared, taken
    as (NT x NT²) @ (NT² x B·Pw): that orientation runs ~1.7x faster in MKL at these sizes."""
    B, Pw, NT, _ = X.shape
    if nn_w.dim() == 2:
        return (nn_w.T @ X.reshape(B * Pw, NT * NT).T).T.reshape(B, Pw, -1)
    return X.reshape(B, Pw, NT * NT) @ nn_w


def _leaf_tables(et, w_leaf, NT):
    """U, V, W position-major (n, B, NT, ·): one GEMM each when shared, its left operand a
    transposed view of a (T, n·B) copy of e: MKL runs (n·B x T) @ (T x NT²) with a small T
    at ~35 GFLOP/s when both are row-major, ~80 this way (issue 17)."""
    B, n, T = et.shape
    if w_leaf[0].dim() == 2:
        et_t = et.permute(2, 1, 0).reshape(T, n * B)
        return tuple((et_t.T @ wl).view(n, B, NT, -1) for wl in w_leaf)
    return tuple((et @ wl).transpose(0, 1).contiguous().reshape(n, B, NT, -1) for wl in w_leaf)


def chart_forward(et, mt, P, rshift, phi, NT) -> Chart:
    B, n, T = et.shape
    tiny = torch.finfo(et.dtype).tiny
    w_leaf, nn_w = _split_rules(P, NT)
    U, V, W = _leaf_tables(et, w_leaf, NT)

    CL = et.new_zeros(B, n, n + 1, NT)
    CR = et.new_zeros(B, n + 1, n + 1, NT)
    ML = et.new_zeros(B, n, n + 1)
    MR = et.new_zeros(B, n + 1, n + 1)
    SC = et.new_ones(B, n, n + 1)
    RU, LV = et.new_zeros(n, B, n + 1, NT), et.new_zeros(n, B, n + 1, NT)
    scales = [None, None, None]
    for w in range(2, n + 1):
        Pw = n - w + 1
        first, last, mid, M = _splits(ML, MR, mt, rshift, w, n)
        if w == 2:
            Y = _matvec(W[1:], et[:, :Pw])
        else:
            a_first, a_last = torch.exp(first - M), torch.exp(last - M)
            a_mid = None if mid is None else torch.exp(mid - M[..., None])
            # the scaled leaf-split children, written once where the backward reads them
            right, left = RU[:Pw, :, w], LV[w - 1:, :, w]                # (Pw, B, NT) views
            torch.mul(CL[:, 1:1 + Pw, w - 1].transpose(0, 1), a_first.t()[..., None],
                      out=right)
            torch.mul(CL[:, :Pw, w - 1].transpose(0, 1), a_last.t()[..., None], out=left)
            # matvecs as (1 x NT) @ (NT x NT)ᵀ: MKL's batched GEMM is ~7x faster that way
            # round than as (NT x NT) @ (NT x 1) at these sizes
            Yp = torch.bmm(right.reshape(Pw * B, 1, NT), transposed_batch(U[:Pw]))
            Yp = torch.baddbmm(Yp, left.reshape(Pw * B, 1, NT), transposed_batch(V[w - 1:]))
            Y = Yp.view(Pw, B, NT).transpose(0, 1)
            X = None
            if a_mid is not None:
                lefts = CL[:, :Pw, 2:w - 1] * a_mid[..., None]
                rights = CR[:, w:, n - w + 2:n - 1].contiguous()   # strided bmm: ~2x slower
                X = outer_sum(lefts, rights)
                Y = Y + _nn_contract(X, nn_w)
            scales.append((a_first, a_last, a_mid, X))
        if phi is not None:
            Y = Y * span_factor(phi, w)
        s = Y.sum(-1).clamp_min(tiny)
        E = Y / s[..., None]
        CL[:, :Pw, w] = E
        CR[:, w:, n - w] = E
        m = M + torch.log(s)
        ML[:, :Pw, w] = m
        MR[:, w:, n - w] = m
        SC[:, :Pw, w] = s
    return Chart(CL, CR, ML, MR, SC, U, V, W, w_leaf, nn_w, RU, LV, scales)


def transposed_batch(mats):
    """(P, B, a, c) position-major matrices as a (P·B, c, a) batch of transposed views."""
    P, B, a, c = mats.shape
    return mats.reshape(P * B, a, c).transpose(1, 2)


def _matvec(mats, vecs):
    """y[b,p,a] = Σ_c mats[p,b,a,c] vecs[b,p,c]: position-major matrices, batch-major vectors
    (computed as row vector @ transposed matrix, the fast orientation of batched GEMM)."""
    P, B, a, c = mats.shape
    v = vecs.transpose(0, 1).reshape(P * B, 1, c)
    return torch.bmm(v, transposed_batch(mats)).view(P, B, a).transpose(0, 1)


def outer_sum(lefts, rights):
    """Σ_k lefts[b,p,k,:] ⊗ rights[b,p,k,:] -> (B, Pw, NT, NT); a broadcast product for k = 1,
    where a batched GEMM of rank 1 is about 2x slower."""
    if lefts.shape[2] == 1:
        return lefts[:, :, 0, :, None] * rights[:, :, 0, None, :]
    return bmm4(lefts.transpose(-1, -2), rights)


def bmm4(a, b):
    """(…, m, k) @ (…, k, n) for operands with the same two leading axes, as one torch.bmm on
    the flattened batch: torch.matmul takes a ~3x slower path on 4-D operands when one is a
    transposed view (issue 17)."""
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.view(*a.shape[:-1], b.shape[-1])


def vecmat(vecs, mats):
    """y[b,p,c] = Σ_a vecs[b,p,a] mats[p,b,a,c]."""
    return (vecs.transpose(0, 1)[..., None, :] @ mats).squeeze(-2).transpose(0, 1)


def span_factor(phi, w):
    """exp(φ) on the cells of width w, broadcastable against (B, n-w+1, NT)."""
    n = phi.shape[1]
    p = torch.arange(n - w + 1, device=phi.device)
    f = torch.exp(phi[:, p, p + w])
    return f if f.dim() == 3 else f[..., None]
