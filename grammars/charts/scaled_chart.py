"""The scaled inside chart: the forward recursion of `inside.py`, one step per span width.

Kept apart from the autograd wiring (inside.py) and the outside pass (outside.py) that reads
what it leaves: the chart, the per-width split weights and normalizers, the leaf tables, and
the NT·NT outer sums X, kept so that the backward does not rebuild them (a batched rank-K GEMM
per width, the slowest kernel of the pass; costs B·Σ_w (n-w+1)·NT² floats).

Every chart is position-major, (start, batch, width, …): the rows of one width are then
(position, batch) pairs with one stride, so each operand of a width is a 3-D view that
batched GEMMs take without a copy, and the cells ending at one position (the right children)
are a strided view of the same chart (`right_children`), so no second layout is written.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch


class Chart(NamedTuple):
    CL: torch.Tensor   # (n, B, n+1, NT)  E of cell (i, i+w) at [i, :, w]; widths 0, 1 zero
    ML: torch.Tensor   # (n, B, n+1)      its log-scale m; at width 1 the leaf split's scale
    U: torch.Tensor    # (n, B, NT, NT)   left leaf at i:  Σ_t e_i[t] P[A,t,C]
    V: torch.Tensor    # (n, B, NT, NT)   right leaf at j: Σ_u P[A,B,u] e_j[u]
    W: torch.Tensor    # (n, B, NT, T)    right leaf of a width-2 span: Σ_u P[A,t,u] e_j[u]
    w_leaf: tuple      # the three (…, T, ·) rule matrices U, V, W were made from
    nn_w: torch.Tensor  # (…, NT·NT, NT)   NT·NT rule block as a GEMM operand
    RU: torch.Tensor   # (n, B, n+1, NT) right child of the k=1 split, scaled: [i, :, w]
    LV: torch.Tensor   # (n, B, n+1, NT) left child of the k=w-1 split, scaled: [j, :, w]
    scales: list       # per width w >= 2: (a, s, X): split weights a (Pw, B, w-1) (None at
                       # w = 2), cell normalizers s (Pw, B) (E = Y / s), X = Σ_k left ⊗ right
                       # (Pw·B, NT, NT) (None below w = 4), never modified


def _split_rules(P: torch.Tensor, NT: int):
    """The four CNF blocks of P laid out as GEMM operands."""
    T = P.shape[-1] - NT
    lead = P.shape[:-3]
    w_tn = P[..., NT:, :NT].movedim(-2, -3).reshape(*lead, T, NT * NT)   # [t, (A, C)]
    w_nt = P[..., :NT, NT:].movedim(-1, -3).reshape(*lead, T, NT * NT)   # [u, (A, B)]
    w_tt = P[..., NT:, NT:].movedim(-1, -3).reshape(*lead, T, NT * T)    # [u, (A, t)]
    nn_w = P[..., :NT, :NT].reshape(*lead, NT, NT * NT).transpose(-1, -2)  # [(B, C), A]
    return (w_tn, w_nt, w_tt), nn_w


def right_children(C: torch.Tensor, w: int, k0: int, k1: int) -> torch.Tensor:
    """Cells (p+k, p+w), the right children of splits k0 <= k < k1 of the spans (p, p+w) of
    width w, as a (Pw, B, k1-k0, …) strided view of a position-major chart C."""
    n, B = C.shape[:2]
    s = C.stride()
    return C.as_strided((n - w + 1, B, k1 - k0) + C.shape[3:], (s[0], s[1], s[0] - s[2]) + s[3:],
                        C.storage_offset() + k0 * s[0] + (w - k0) * s[2])


def _nn_contract(X, nn_w, Pw, B):
    """Σ_{B,C} X[(p,b),B,C] P[A,B,C] -> (Pw, B, NT); one GEMM when the grammar is shared, taken
    as (NT x NT²) @ (NT² x B·Pw): that orientation runs ~1.7x faster in MKL at these sizes."""
    NT = X.shape[-1]
    if nn_w.dim() == 2:
        return (nn_w.T @ X.view(Pw * B, NT * NT).T).T.view(Pw, B, -1)
    return (X.view(Pw, B, NT * NT).transpose(0, 1) @ nn_w).transpose(0, 1)


def _leaf_tables(et_pm, w_leaf, NT):
    """U, V, W position-major (n, B, NT, ·) from e position-major (n, B, T): one GEMM each
    when shared, its left operand a transposed view of a (T, n·B) copy of e: MKL runs
    (n·B x T) @ (T x NT²) with a small T at ~35 GFLOP/s when both are row-major, ~80 this way
    (issue 17)."""
    n, B, T = et_pm.shape
    if w_leaf[0].dim() == 2:
        et_t = et_pm.permute(2, 0, 1).reshape(T, n * B)
        return tuple((et_t.T @ wl).view(n, B, NT, -1) for wl in w_leaf)
    et = et_pm.transpose(0, 1)
    return tuple((et @ wl).transpose(0, 1).contiguous().view(n, B, NT, -1) for wl in w_leaf)


def chart_forward(et, mt, P, rshift, phi, NT) -> Chart:
    B, n, T = et.shape
    tiny = torch.finfo(et.dtype).tiny
    w_leaf, nn_w = _split_rules(P, NT)
    et_pm = et.transpose(0, 1)
    U, V, W = _leaf_tables(et_pm, w_leaf, NT)

    CL = et.new_empty(n, B, n + 1, NT)
    CL[:, :, :2] = 0                      # never computed; the root of a 1-word sentence
    ML = et.new_empty(n, B, n + 1)
    r_nn, r_nt, r_tn, r_tt = rshift.unbind(-1)
    # A split's log-scale is m_left + m_right + its rule block's shift; with the leaf column
    # holding mt + r_tn - r_nn, one sum of two chart views gives every split's scale less r_nn
    # (the k = w-1 split corrected by r_nt - r_tn).
    mt_pm = mt.t()
    ML[:, :, 1] = mt_pm + (r_tn - r_nn)
    r_last = r_nt - r_tn
    RU, LV = leaf_factors(et, NT, True), leaf_factors(et, NT, False)
    scales = [None, None]
    for w in range(2, n + 1):
        Pw = n - w + 1
        a = X = None
        if w == 2:
            M = mt_pm[:Pw] + mt_pm[1:] + r_tt
            Y = _matvec(W[1:], et_pm[:Pw])
        else:
            a = ML[:Pw, :, 1:w] + right_children(ML, w, 1, w)             # (Pw, B, w-1)
            a[..., -1] += r_last
            M = a.amax(-1)
            a = a.sub_(M[..., None]).exp_()
            M += r_nn
            # the scaled leaf-split children, written once where the backward reads them
            right, left = RU[:Pw, :, w], LV[w - 1:, :, w]                # (Pw, B, NT) views
            torch.mul(CL[1:1 + Pw, :, w - 1], a[..., :1], out=right)
            torch.mul(CL[:Pw, :, w - 1], a[..., -1:], out=left)
            # matvecs as (1 x NT) @ (NT x NT)ᵀ: MKL's batched GEMM is ~7x faster that way
            # round than as (NT x NT) @ (NT x 1) at these sizes
            Y = torch.bmm(right.reshape(Pw * B, 1, NT), transposed_batch(U[:Pw]))
            Y = torch.baddbmm(Y, left.reshape(Pw * B, 1, NT), transposed_batch(V[w - 1:]))
            Y = Y.view(Pw, B, NT)
            if w >= 4:
                X = outer_sum(CL[:Pw, :, 2:w - 1], scaled_rights(CL, a, w))
                Y = Y + _nn_contract(X, nn_w, Pw, B)
        if phi is not None:
            Y = Y * span_factor(phi, w)
        s = Y.sum(-1).clamp_min_(tiny)
        torch.div(Y, s[..., None], out=CL[:Pw, :, w])
        torch.add(M, torch.log(s), out=ML[:Pw, :, w])
        scales.append((a, s, X))
    return Chart(CL, ML, U, V, W, w_leaf, nn_w, RU, LV, scales)


def scaled_rights(CL, a, w):
    """The right children of the NT·NT splits of width w times their split weights, the
    operand of X = Σ_k left ⊗ right (the left children are read in place); written
    contiguous (a product would follow the view's strides)."""
    rights = right_children(CL, w, 2, w - 1)
    return torch.mul(rights, a[..., 1:-1, None], out=CL.new_empty(rights.shape))


LEAF_BLOCKS = 4


def leaf_blocks(n: int, left: bool) -> list:
    """(i0, i1, hi): blocks of leaf positions and the end of the widths 3 <= w < hi a leaf there
    takes part in: w <= n - i as a left leaf, w <= i + 1 as a right one."""
    step = -(-n // LEAF_BLOCKS)
    return [(i0, min(n, i0 + step), n - i0 + 1 if left else min(n, i0 + step) + 1)
            for i0 in range(0, n, step)]


def leaf_factors(et, NT: int, left: bool) -> torch.Tensor:
    """An (n, B, n+1, NT) buffer of one factor of the leaf-table gradients (see
    `outside.leaf_outer_sums`), filled per width; uninitialized but for the zeros where a
    block of positions reads a width no span at a position has (~10% of it, not a full fill)."""
    B, n = et.shape[:2]
    buf = et.new_empty(n, B, n + 1, NT)
    i, w = _unused_widths(n, left, et.device)
    buf[i, :, w] = 0
    return buf


@lru_cache(maxsize=64)
def _unused_widths(n: int, left: bool, device):
    i, w = torch.arange(n)[:, None], torch.arange(n + 1)[None, :]
    hi = torch.tensor([h for i0, i1, h in leaf_blocks(n, left) for _ in range(i0, i1)])[:, None]
    unused = (w >= 3) & (w < hi) & (w > (n - i if left else i + 1))
    return tuple(x.to(device) for x in unused.nonzero(as_tuple=True))


def transposed_batch(mats):
    """(P, B, a, c) position-major matrices as a (P·B, c, a) batch of transposed views."""
    P, B, a, c = mats.shape
    return mats.reshape(P * B, a, c).transpose(1, 2)


def _matvec(mats, vecs):
    """y[p,b,a] = Σ_c mats[p,b,a,c] vecs[p,b,c] (computed as row vector @ transposed matrix,
    the fast orientation of batched GEMM)."""
    P, B, a, c = mats.shape
    return torch.bmm(vecs.reshape(P * B, 1, c), transposed_batch(mats)).view(P, B, a)


def outer_sum(lefts, rights):
    """Σ_k lefts[p,b,k,:] ⊗ rights[p,b,k,:] -> (P·B, NT, NT); a broadcast product for k = 1,
    where a batched GEMM of rank 1 is about 2x slower."""
    P, B, K, NT = lefts.shape
    if K == 1:
        return torch.mul(lefts[:, :, 0, :, None], rights[:, :, 0, None, :],
                         out=lefts.new_empty(P * B, NT, NT).view(P, B, NT, NT)).view(P * B, NT, NT)
    return torch.bmm(lefts.reshape(P * B, K, NT).transpose(1, 2), rights.view(P * B, K, NT))


def vecmat(vecs, mats):
    """y[p,b,c] = Σ_a vecs[p,b,a] mats[p,b,a,c]."""
    P, B, a, c = mats.shape
    return torch.bmm(vecs.reshape(P * B, 1, a), mats.reshape(P * B, a, c)).view(P, B, c)


def span_factor(phi, w):
    """exp(φ) on the cells of width w, broadcastable against (n-w+1, B, NT)."""
    n = phi.shape[1]
    p = torch.arange(n - w + 1, device=phi.device)
    f = torch.exp(phi[:, p, p + w]).transpose(0, 1)
    return f if f.dim() == 3 else f[..., None]
