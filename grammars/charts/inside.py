"""The inside algorithm for a CNF PCFG in the log semiring (Baker 1979; Kim et al. 2019).

log Z(x) = log Σ_trees p(tree, x), batched over sentences of different lengths, with one
vectorized step per span width (a Python loop over widths only). Why it is fast and safe:

* GEMM-shaped: the log semiring's ⊕/⊗ (Goodman 1999) are computed in the linear domain under
  a shift: max-shifted exp -> matmul -> log, never a broadcast logsumexp over (A, B, C).
  Chart cells are kept *scaled*, β(i,j,·) = E · exp(m), E ≥ 0 summing to 1, m a log-scale;
  emissions are shifted per position and rules per CNF block. Each (span, split) product gets
  its own shift (m_left + m_right + the rule block's), folded into one common max per span, so
  exponentials stay in [0, 1]: length 40-60 sentences with log-probs of -300, or rule blocks
  hundreds of nats apart, neither underflow nor NaN. The price of GEMMs over logsumexp: inside
  one contraction, a term more than ~87 nats (float32; ~700 in float64) below the product of
  its operands' maxima is dropped, e.g. a preterminal the rules almost never combine with
  being the only one a word emits. Normalized grammars stay far from that; else use float64.
* CNF structure: preterminals occur only at width 1, so the rules split into NT·NT, NT·T,
  T·NT and T·T blocks. T·T runs once (width 2); a preterminal child occurs only at split
  k = 1 (left) or k = w-1 (right) and is contracted with its rule block once per *position*
  before the loop; NT·NT runs on the NT-only charts of splits 2..w-2. Never the full S×S.
* Two chart layouts, by (start, width) and by (end, n - width), make the children of every
  split of one width a single strided slice, so a width costs O(1) tensor ops.
* A hand-written outside pass is the backward (reverse-mode of the same linear recursion,
  the inside-outside algorithm of Baker 1979): no autograd graph over the chart, memory
  O(B n² NT + B n NT (NT + T)). Shifts and normalizers are constants of the recursion (the
  value does not depend on them), so the gradient is exact; the only differentiable log is
  at the root, guarded against log(0).

One-word sentences: Kim et al.'s CNF grammar has no root -> preterminal rule and cannot
generate them, so log Z = -inf (probability 0), with a zero gradient. torch-struct's
`SentCFG` denotes the same zero by its chart's fill value (-1e5); the reference backend maps it
to -inf. Training code should drop 1-word sentences, as Kim et al. do.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from grammars.charts.pcfg_params import PCFGParams, check_lengths, masked_terms, shared_rules


def log_partition(params: PCFGParams) -> torch.Tensor:
    """log Σ_trees p(tree, words) per sentence, (B,); -inf for 1-word sentences."""
    return _log_partition(params, None)


def span_marginals(params: PCFGParams, labeled: bool = False) -> torch.Tensor:
    """Posterior probability that [i, j) is a constituent: (B, n, n+1), or (B, n, n+1, NT)
    for P([i, j) is a constituent labeled A) when `labeled`.

    ∂ log Z / ∂φ for a zero potential φ added to every chart cell (the inside-outside
    identity, here through autograd). Width-1 spans inside a sentence are leaves, always
    constituents: 1 when unlabeled (0 in every NT slot when labeled). Entries past a
    sentence, and every entry of a 1-word sentence other than its leaf, are 0.
    """
    B, n, NT = params.batch_size, params.max_length, params.num_nonterminals
    terms = params.terms
    lengths = check_lengths(params)
    phi = torch.zeros((B, n, n + 1) + ((NT,) if labeled else ()), dtype=terms.dtype,
                      device=terms.device, requires_grad=True)
    with torch.enable_grad():
        log_z = _log_partition(params, phi)
        keep = lengths >= 2
        if n >= 2 and bool(keep.any()):
            (marg,) = torch.autograd.grad(log_z[keep].sum(), [phi])
        else:
            marg = torch.zeros_like(phi)
    if not labeled:
        p = torch.arange(n, device=terms.device)
        marg[:, p, p + 1] = (p[None, :] < lengths[:, None]).to(marg.dtype)
    return marg


def inside_chart(params: PCFGParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(log Z (B,), chart (B, n, n+1, NT)) with chart[b, i, j, A] = log β_A(i, j), the log
    inside score of A over words i..j-1; -inf for widths < 2 and cells ending past the
    sentence. Gradient-free; for top-down samplers."""
    with torch.no_grad():
        lengths = check_lengths(params)
        et, mt, P, rshift = _scaled_inputs(params, lengths)
        ch = _chart_forward(et, mt, P, rshift, None, params.num_nonterminals)
        log_z = _root(params, lengths, ch.CL, ch.ML)
        B, n, NT = params.batch_size, params.max_length, params.num_nonterminals
        chart = torch.full((B, n, n + 1, NT), float("-inf"), dtype=et.dtype, device=et.device)
        for w in range(2, n + 1):
            p = torch.arange(n - w + 1, device=et.device)
            cell = torch.log(ch.CL[:, : n - w + 1, w]) + ch.ML[:, : n - w + 1, w, None]
            fits = (p[None, :] + w <= lengths[:, None])[..., None]
            chart[:, p, p + w] = torch.where(fits, cell, torch.full_like(cell, float("-inf")))
    return log_z, chart


def finite_shift(x: torch.Tensor, dims) -> torch.Tensor:
    """Detached max over `dims`, with -inf (all-impossible) maxima replaced by 0."""
    m = x.detach().amax(dim=dims)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


# ---------------------------------------------------------------------------------------
# implementation

def _log_partition(params: PCFGParams, phi: torch.Tensor | None) -> torch.Tensor:
    lengths = check_lengths(params)
    et, mt, P, rshift = _scaled_inputs(params, lengths)
    e_top, m_top = _ScaledInside.apply(et, mt, P, rshift, phi, lengths, params.num_nonterminals)
    log_z = _root_value(params.roots, e_top, m_top)
    return torch.where(lengths >= 2, log_z, torch.full_like(log_z, float("-inf")))


def _scaled_inputs(params: PCFGParams, lengths: torch.Tensor):
    """Linear-domain inputs under detached shifts: e = exp(terms - mt) per position and
    P = exp(R - r_block) with one shift per CNF block (NT·NT, NT·T, T·NT, T·T), so a block far
    below the others (e.g. costly leaf-beside-nonterminal rules) keeps its precision."""
    terms = masked_terms(params, lengths)
    mt = finite_shift(terms, -1)                                # (B, n)
    et = torch.exp(terms - mt[..., None])                       # (B, n, T), row max 1
    shared = shared_rules(params.rules)
    R = shared if shared is not None else params.rules          # (NT,S,S) or (B,NT,S,S)
    NT = params.num_nonterminals
    S = R.shape[-1]
    blocks = [(slice(0, NT), slice(0, NT)), (slice(0, NT), slice(NT, S)),
              (slice(NT, S), slice(0, NT)), (slice(NT, S), slice(NT, S))]
    rshift = torch.stack([finite_shift(R[..., l, r], (-3, -2, -1)) for l, r in blocks], -1)
    is_t = torch.arange(S, device=R.device) >= NT
    which = is_t[:, None].long() * 2 + is_t[None, :].long()     # (S, S) block id
    P = torch.exp(R - rshift[..., None, which])                 # (…, 1, S, S) shifts
    if shared is not None:
        rshift = rshift.expand(params.batch_size, 4)
    return et, mt, P, rshift                                    # rshift (B, 4): nn, nt, tn, tt


def _root_value(roots, e_top, m_top):
    shift = finite_shift(roots, -1)
    tiny = torch.finfo(e_top.dtype).tiny
    mass = (e_top * torch.exp(roots - shift[:, None])).sum(-1).clamp_min(tiny)
    return torch.log(mass) + m_top + shift


def _root(params, lengths, CL, ML):
    rows = torch.arange(params.batch_size, device=lengths.device)
    log_z = _root_value(params.roots, CL[rows, 0, lengths], ML[rows, 0, lengths])
    return torch.where(lengths >= 2, log_z, torch.full_like(log_z, float("-inf")))


class _Chart(NamedTuple):
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
    scales: list       # per width w >= 3: exp(first - M), exp(last - M), exp(mid - M) or None


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
    """U, V, W position-major (n, B, NT, ·): one GEMM each, no transposed copy when shared."""
    B, n, _ = et.shape
    if w_leaf[0].dim() == 2:
        etp = et.transpose(0, 1).reshape(n * B, -1)
        return tuple((etp @ wl).view(n, B, NT, -1) for wl in w_leaf)
    return tuple((et @ wl).transpose(0, 1).contiguous().reshape(n, B, NT, -1) for wl in w_leaf)


def _chart_forward(et, mt, P, rshift, phi, NT) -> _Chart:
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
            scales.append((a_first, a_last, a_mid))
            # the scaled leaf-split children, written once where the backward reads them
            right, left = RU[:Pw, :, w], LV[w - 1:, :, w]                # (Pw, B, NT) views
            torch.mul(CL[:, 1:1 + Pw, w - 1].transpose(0, 1), a_first.t()[..., None],
                      out=right)
            torch.mul(CL[:, :Pw, w - 1].transpose(0, 1), a_last.t()[..., None], out=left)
            # matvecs as (1 x NT) @ (NT x NT)ᵀ: MKL's batched GEMM is ~7x faster that way
            # round than as (NT x NT) @ (NT x 1) at these sizes
            Yp = torch.bmm(right.reshape(Pw * B, 1, NT), _t(U[:Pw]))
            Yp = torch.baddbmm(Yp, left.reshape(Pw * B, 1, NT), _t(V[w - 1:]))
            Y = Yp.view(Pw, B, NT).transpose(0, 1)
            if a_mid is not None:
                lefts = CL[:, :Pw, 2:w - 1] * a_mid[..., None]
                rights = CR[:, w:, n - w + 2:n - 1]
                Y = Y + _nn_contract(_outer_sum(lefts, rights), nn_w)
        if phi is not None:
            Y = Y * _span_factor(phi, w)
        s = Y.sum(-1).clamp_min(tiny)
        E = Y / s[..., None]
        CL[:, :Pw, w] = E
        CR[:, w:, n - w] = E
        m = M + torch.log(s)
        ML[:, :Pw, w] = m
        MR[:, w:, n - w] = m
        SC[:, :Pw, w] = s
    return _Chart(CL, CR, ML, MR, SC, U, V, W, w_leaf, nn_w, RU, LV, scales)


def _t(mats):
    """(P, B, a, c) position-major matrices as a (P·B, c, a) batch of transposed views."""
    P, B, a, c = mats.shape
    return mats.reshape(P * B, a, c).transpose(1, 2)


def _matvec(mats, vecs):
    """y[b,p,a] = Σ_c mats[p,b,a,c] vecs[b,p,c]: position-major matrices, batch-major vectors
    (computed as row vector @ transposed matrix, the fast orientation of batched GEMM)."""
    P, B, a, c = mats.shape
    v = vecs.transpose(0, 1).reshape(P * B, 1, c)
    return torch.bmm(v, _t(mats)).view(P, B, a).transpose(0, 1)


def _outer_sum(lefts, rights):
    """Σ_k lefts[b,p,k,:] ⊗ rights[b,p,k,:] -> (B, Pw, NT, NT); a broadcast product for k = 1,
    where a batched GEMM of rank 1 is about 2x slower."""
    if lefts.shape[2] == 1:
        return lefts[:, :, 0, :, None] * rights[:, :, 0, None, :]
    return lefts.transpose(-1, -2) @ rights


def _vecmat(vecs, mats):
    """y[b,p,c] = Σ_a vecs[b,p,a] mats[p,b,a,c]."""
    return (vecs.transpose(0, 1)[..., None, :] @ mats).squeeze(-2).transpose(0, 1)


def _span_factor(phi, w):
    """exp(φ) on the cells of width w, broadcastable against (B, n-w+1, NT)."""
    n = phi.shape[1]
    p = torch.arange(n - w + 1, device=phi.device)
    f = torch.exp(phi[:, p, p + w])
    return f if f.dim() == 3 else f[..., None]


class _ScaledInside(torch.autograd.Function):
    """Scaled inside chart forward; the outside pass (reverse-mode of the same recursion) as
    backward. Returns the root cell of each sentence, E (B, NT) and its log-scale m (B,)."""

    @staticmethod
    def forward(ctx, et, mt, P, rshift, phi, lengths, NT):
        ch = _chart_forward(et, mt, P, rshift, phi, NT)
        rows = torch.arange(et.shape[0], device=et.device)
        ctx.save_for_backward(et, mt, rshift, phi, lengths, ch.CL, ch.CR, ch.ML, ch.MR, ch.SC,
                              ch.U, ch.V, ch.W, ch.RU, ch.LV, *ch.w_leaf, ch.nn_w)
        ctx.NT = NT
        ctx.scales = ch.scales          # small (B, n-w+1[, w-3]) factors, never modified
        m_top = ch.ML[rows, 0, lengths]
        ctx.mark_non_differentiable(m_top)
        return ch.CL[rows, 0, lengths], m_top

    @staticmethod
    @once_differentiable
    def backward(ctx, g_top, _g_m):
        et, mt, rshift, phi, lengths, CL, CR, ML, MR, SC, U, V, W, ru, lv, *w_leaf, nn_w = \
            ctx.saved_tensors
        NT = ctx.NT
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
        g_phi = torch.zeros_like(phi) if phi is not None and ctx.needs_input_grad[4] else None
        for w in range(n, 1, -1):
            Pw = n - w + 1
            gE = GL[:, :Pw, w] + GR[:, w:, n - w]
            Y_bar = gE / SC[:, :Pw, w, None]
            if phi is not None:
                if g_phi is not None:
                    p = torch.arange(Pw, device=et.device)
                    contrib = gE * CL[:, :Pw, w]                  # Ȳ·Y = Ē·E
                    g_phi[:, p, p + w] = contrib if phi.dim() == 4 else contrib.sum(-1)
                Y_bar = Y_bar * _span_factor(phi, w)
            if w == 2:
                gW[0].zero_()
                torch.mul(Y_bar.transpose(0, 1)[..., None], et.transpose(0, 1)[:Pw, :, None, :],
                          out=gW[1:])
                g_et[:, :Pw] += _vecmat(Y_bar, W[1:])
                continue
            a_first, a_last, a_mid = ctx.scales[w]
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
                rights = CR[:, w:, n - w + 2:n - 1]
                X = _outer_sum(lefts, rights)                     # recomputed, (B,Pw,NT,NT)
                if nn_w.dim() == 2:
                    g_nn_t += Y_bar.reshape(B * Pw, NT).T @ X.reshape(B * Pw, NT * NT)
                    X_bar = (Y_bar.reshape(B * Pw, NT) @ nn_w.T).reshape(B, Pw, NT, NT)
                else:
                    g_nn += X.reshape(B, Pw, NT * NT).transpose(1, 2) @ Y_bar
                    X_bar = (Y_bar @ nn_w.transpose(1, 2)).reshape(B, Pw, NT, NT)
                GL[:, :Pw, 2:w - 1] += (rights @ X_bar.transpose(-1, -2)) * a_mid
                GR[:, w:, n - w + 2:n - 1] += lefts @ X_bar

        # leaf tables: U = e @ w_tn, V = e @ w_nt, W = e @ w_tt
        gU = yu.transpose(-1, -2) @ ru                   # (n, B, NT, NT)
        gV = yv.transpose(-1, -2) @ lv
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
        if ctx.needs_input_grad[2]:
            lead = nn_w.shape[:-2]
            g_P = torch.zeros(*lead, NT, NT + T, NT + T, dtype=et.dtype, device=et.device)
            g_P[..., :NT, :NT] = g_nn.transpose(-1, -2).reshape(*lead, NT, NT, NT)
            g_P[..., NT:, :NT] = g_leaf[0].reshape(*lead, T, NT, NT).movedim(-3, -2)
            g_P[..., :NT, NT:] = g_leaf[1].reshape(*lead, T, NT, NT).movedim(-3, -1)
            g_P[..., NT:, NT:] = g_leaf[2].reshape(*lead, T, NT, T).movedim(-3, -1)
        return g_et, None, g_P, None, g_phi, None, None
