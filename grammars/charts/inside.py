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
* One position-major chart (start, batch, width): the left children of every split of one
  width are a slice of it and the right children (cells by end) a strided view of the same
  memory, so a width costs O(1) tensor ops and no second layout is written.
* A hand-written outside pass is the backward (reverse-mode of the same linear recursion,
  the inside-outside algorithm of Baker 1979; outside.py): no autograd graph over the chart,
  memory O(B n² NT² + B n NT (NT + T)), the NT² term the NT·NT outer sums the forward keeps so
  that the backward does not rebuild them (81 MB at B=32, n=40, NT=30, float32). Shifts and normalizers are constants of the recursion (the
  value does not depend on them), so the gradient is exact; the only differentiable log is
  at the root, guarded against log(0).

One-word sentences: Kim et al.'s CNF grammar has no root -> preterminal rule and cannot
generate them, so log Z = -inf (probability 0), with a zero gradient. torch-struct's
`SentCFG` denotes the same zero by its chart's fill value (-1e5); the reference backend maps it
to -inf. Training code should drop 1-word sentences, as Kim et al. do.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from grammars.charts.allocator import retain_freed_memory
from grammars.charts.outside import outside
from grammars.charts.pcfg_params import PCFGParams, check_lengths, masked_terms, shared_rules
from grammars.charts.scaled_chart import chart_forward


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
    retain_freed_memory()
    with torch.no_grad():
        lengths = check_lengths(params)
        et, mt, P, rshift = _scaled_inputs(params, lengths)
        ch = chart_forward(et, mt, P, rshift, None, params.num_nonterminals)
        log_z = _root(params, lengths, ch.CL, ch.ML)
        B, n, NT = params.batch_size, params.max_length, params.num_nonterminals
        chart = torch.full((B, n, n + 1, NT), float("-inf"), dtype=et.dtype, device=et.device)
        i, j = torch.triu_indices(n + 1, n + 1, 2, device=et.device)    # every cell, w >= 2
        cell = (torch.log(ch.CL[i, :, j - i]) + ch.ML[i, :, j - i, None]).transpose(0, 1)
        fits = (j[None, :] <= lengths[:, None])[..., None]
        chart[:, i, j] = torch.where(fits, cell, torch.full_like(cell, float("-inf")))
    return log_z, chart


def finite_shift(x: torch.Tensor, dims) -> torch.Tensor:
    """Detached max over `dims`, with -inf (all-impossible) maxima replaced by 0."""
    m = x.detach().amax(dim=dims)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


# ---------------------------------------------------------------------------------------
# implementation

def _log_partition(params: PCFGParams, phi: torch.Tensor | None) -> torch.Tensor:
    retain_freed_memory()
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
    log_z = _root_value(params.roots, CL[0, rows, lengths], ML[0, rows, lengths])
    return torch.where(lengths >= 2, log_z, torch.full_like(log_z, float("-inf")))


class _ScaledInside(torch.autograd.Function):
    """Scaled inside chart forward (scaled_chart.py); the outside pass (outside.py) as
    backward. Returns the root cell of each sentence, E (B, NT) and its log-scale m (B,)."""

    @staticmethod
    def forward(ctx, et, mt, P, rshift, phi, lengths, NT):
        ch = chart_forward(et, mt, P, rshift, phi, NT)
        rows = torch.arange(et.shape[0], device=et.device)
        ctx.save_for_backward(et, phi, lengths, ch.CL, ch.U, ch.V, ch.W, ch.RU, ch.LV,
                              *ch.w_leaf, ch.nn_w)
        ctx.NT = NT
        ctx.scales = ch.scales          # per-width factors and outer sums, never modified
        m_top = ch.ML[0, rows, lengths]
        ctx.mark_non_differentiable(m_top)
        return ch.CL[0, rows, lengths], m_top

    @staticmethod
    @once_differentiable
    def backward(ctx, g_top, _g_m):
        g_et, g_P, g_phi = outside(ctx.saved_tensors, ctx.scales, ctx.NT, g_top,
                                   ctx.needs_input_grad[2], ctx.needs_input_grad[4])
        return g_et, None, g_P, None, g_phi, None, None
