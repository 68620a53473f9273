"""The outside pass: the backward of the scaled inside chart (scaled_chart.py).

Reverse-mode of the same linear recursion, widths from n down to 2 (Baker 1979's
inside-outside, written by hand: no autograd graph over the chart). It reads the forward's
scaled quantities as they are: the per-cell normalizers, the split scales, the leaf-split
children and the NT·NT outer sums X, so no shift, exp or GEMM is recomputed (only the scaled
children of the NT·NT splits are re-read, a product and a copy per width).
"""
from __future__ import annotations

import torch

from grammars.charts.scaled_chart import bmm4, span_factor, vecmat


def outside(saved: tuple, scales: list, NT: int, g_top: torch.Tensor, need_P: bool,
            need_phi: bool):
    """(∂/∂e, ∂/∂P or None, ∂/∂φ or None) from ∂/∂E of the root cells, g_top (B, NT)."""
    et, phi, lengths, CL, CR, SC, U, V, W, ru, lv, *w_leaf, nn_w = saved
    B, n, T = et.shape
    rows = torch.arange(B, device=et.device)

    GL = torch.zeros_like(CL)          # ∂/∂E of each cell, by (start, width)
    GR = torch.zeros_like(CR)          # ... and by (end, n - width); summed per width
    GL[rows, 0, lengths] = g_top
    # Leaf-table gradients are sums over widths of outer products, e.g.
    # ∂U[i,b] = Σ_w Ȳ_w[b,i] ⊗ right_w[b,i]: collect both factors per width, one bmm at
    # the end.
    # (the right/left factors were written by the forward pass: ru, lv)
    yu, yv = et.new_zeros(n, B, n + 1, NT), et.new_zeros(n, B, n + 1, NT)
    gW = torch.empty_like(W) if n >= 2 else torch.zeros_like(W)   # filled at width 2
    g_et = torch.zeros_like(et)
    g_nn = torch.zeros_like(nn_w)
    g_nn_t = g_nn.transpose(-1, -2)    # accumulated as (NT, NT²): the faster GEMM round
    nn_rows = nn_w.contiguous() if nn_w.dim() == 2 else None   # (NT², NT) row-major
    g_phi = torch.zeros_like(phi) if phi is not None and need_phi else None
    for w in range(n, 1, -1):
        Pw = n - w + 1
        gE = GL[:, :Pw, w] + GR[:, w:, n - w]
        Y_bar = gE / SC[:, :Pw, w, None]
        if phi is not None:
            if g_phi is not None:
                p = torch.arange(Pw, device=et.device)
                contrib = gE * CL[:, :Pw, w]                  # Ȳ·Y = Ē·E
                g_phi[:, p, p + w] = contrib if phi.dim() == 4 else contrib.sum(-1)
            Y_bar = Y_bar * span_factor(phi, w)
        if w == 2:
            gW[0].zero_()
            torch.mul(Y_bar.transpose(0, 1)[..., None], et.transpose(0, 1)[:Pw, :, None, :],
                      out=gW[1:])
            g_et[:, :Pw] += vecmat(Y_bar, W[1:])
            continue
        a_first, a_last, a_mid, X = scales[w]
        yb = yu[:Pw, :, w]                                    # (Pw, B, NT) view
        yb.copy_(Y_bar.transpose(0, 1))
        yv[w - 1:, :, w] = yb
        yb = yb.reshape(Pw * B, 1, NT)
        gl = torch.bmm(yb, U[:Pw].reshape(Pw * B, NT, NT)).view(Pw, B, NT).transpose(0, 1)
        GL[:, 1:1 + Pw, w - 1] += gl * a_first[..., None]
        gl = torch.bmm(yb, V[w - 1:].reshape(Pw * B, NT, NT)).view(Pw, B, NT)
        GL[:, :Pw, w - 1] += gl.transpose(0, 1) * a_last[..., None]
        if a_mid is not None:
            a_mid = a_mid[..., None]
            lefts = CL[:, :Pw, 2:w - 1] * a_mid
            rights = CR[:, w:, n - w + 2:n - 1].contiguous()   # strided bmm: ~2x slower
            if nn_w.dim() == 2:
                g_nn_t += Y_bar.reshape(B * Pw, NT).T @ X.reshape(B * Pw, NT * NT)
                # both operands as transposed views: ~1.5x the rate of (B·Pw x NT) @ (NT x NT²)
                # row-major in MKL
                X_bar = (Y_bar.reshape(B * Pw, NT).T.contiguous().T @ nn_rows.T
                         ).reshape(B, Pw, NT, NT)
            else:
                g_nn += X.reshape(B, Pw, NT * NT).transpose(1, 2) @ Y_bar
                X_bar = (Y_bar @ nn_w.transpose(1, 2)).reshape(B, Pw, NT, NT)
            GL[:, :Pw, 2:w - 1] += bmm4(rights, X_bar.transpose(-1, -2)) * a_mid
            GR[:, w:, n - w + 2:n - 1] += bmm4(lefts, X_bar)

    # leaf tables: U = e @ w_tn, V = e @ w_nt, W = e @ w_tt
    gU = bmm4(yu.transpose(-1, -2), ru)              # (n, B, NT, NT)
    gV = bmm4(yv.transpose(-1, -2), lv)
    g_leaf = []
    for G, wl in zip((gU, gV, gW), w_leaf):
        if wl.dim() == 2:                            # shared grammar: position-major GEMMs
            G = G.reshape(n * B, -1)
            g_et += (wl @ G.T).T.reshape(n, B, T).transpose(0, 1)
            g_leaf.append(et.transpose(0, 1).reshape(n * B, T).T @ G)
        else:
            G = G.transpose(0, 1).reshape(B, n, -1)
            g_et += G @ wl.transpose(-1, -2)
            g_leaf.append(et.transpose(1, 2) @ G)
    g_P = None
    if need_P:
        lead = nn_w.shape[:-2]
        g_P = torch.zeros(*lead, NT, NT + T, NT + T, dtype=et.dtype, device=et.device)
        g_P[..., :NT, :NT] = g_nn.transpose(-1, -2).reshape(*lead, NT, NT, NT)
        g_P[..., NT:, :NT] = g_leaf[0].reshape(*lead, T, NT, NT).movedim(-3, -2)
        g_P[..., :NT, NT:] = g_leaf[1].reshape(*lead, T, NT, NT).movedim(-3, -1)
        g_P[..., NT:, NT:] = g_leaf[2].reshape(*lead, T, NT, T).movedim(-3, -1)
    return g_et, g_P, g_phi
