"""log p_θ(x, s) of a bracketing s: a binary tree's labels summed out by a DP over that tree.

A sampled tree z = (s, labels) gives the M-step the gradient ∇ log p(x, z); its expectation
under the posterior is ∇ log p(x). So does ∇ log p(x, s) = E[∇ log p(x, z) | s, x], with the
labels' share of the noise removed (Rao-Blackwellization). That is `em.mstep_labels: summed`.

The sum over labels runs bottom-up over the fixed tree. For the non-context-free grammar a
node's rule depends on its own label A and its parent's label P, so the message a node sends
up is a table over both:
    μ(P, A) = log Σ_{b, c} p(A → b c | P) ν_left(A, b) ν_right(A, c)
where a child node's ν(A, b) = exp μ_child(A, b) (its parent is A) and a word child's
ν(A, t) = p(w | t, A) over the T preterminals (summed out as everywhere, `forest_score`).
The root adds log Σ_A p(root = A) exp μ_root(ROOT, A). For a context-free grammar there is
one context and ν does not depend on A: the same recursion with the P and A-of-ν axes of
size 1, i.e. the inside algorithm restricted to the spans of s.

Nodes of one width are processed together (children are narrower), two batched GEMMs per
width: the rule table in the linear domain against the right child's ν, then against the
left child's ν; one host sync per call (how many nodes each width has). Messages are max-shifted per node and context, so nothing underflows but terms
more than ~87 nats (float32) below a node's best, as in `grammars.charts.inside`.
"""
from __future__ import annotations

import torch

from grammars.models.forest_score import ForestStructure


def bracketing_log_prob(structure: ForestStructure, words: torch.Tensor, roots: torch.Tensor,
                        rules: torch.Tensor, emissions: torch.Tensor,
                        parent_conditioned: bool) -> torch.Tensor:
    """log Σ_labels p(x, z) for complete trees whose spans `structure` holds: (B,).

    words (B, n) long, gatherable; roots (NT,); rules (C, NT, S, S) with C = NT + 1 (ROOT
    last) when `parent_conditioned`, else C = 1; emissions (CE, T, V) with CE = NT when
    `parent_conditioned`, else 1. Log-probabilities. 1-word sentences get -inf.
    """
    present, lengths = structure.present, structure.lengths.to(words.device)
    B, M = present.shape
    C, NT, S, _ = rules.shape
    K = NT if parent_conditioned else 1          # contexts a child's ν depends on
    dtype, device = rules.dtype, rules.device
    # linear-domain rules, one shift per (P, A) row; Q[a, c, x] lays out the right child's
    # symbol c against x = (P, b) per A (K = NT) or x = (A, b) for one context (K = 1)
    shift = rules.detach().amax(dim=(2, 3))                         # (C, NT)
    lin = torch.exp(rules - shift[..., None, None])
    Q = (lin.permute(1, 3, 0, 2).reshape(NT, S, C * S) if parent_conditioned
         else lin[0].permute(2, 0, 1).reshape(1, S, NT * S))
    emitted = emissions.permute(2, 0, 1)                            # (V, CE, T)

    # nodes ordered by width (children are narrower), with one host sync for the counts; a
    # count over the fixed widths 0..n, not `bincount` (sized by the widest node: a wait more)
    width = torch.where(present, structure.end - structure.start,
                        structure.end.new_zeros(())).flatten()
    order = torch.argsort(width, stable=True)
    counts = torch.zeros(max(words.shape[1], 1) + 1, dtype=width.dtype, device=width.device
                         ).index_add_(0, width, torch.ones_like(width)).tolist()
    node_b, node_m = order // M, order % M
    tiny = torch.finfo(dtype).tiny
    msgs = torch.zeros(B, M, C, NT, dtype=dtype, device=device)     # μ(P, A) per node
    done = counts[0] + counts[1]                                    # absent nodes come first
    for k in counts[2:]:
        if k == 0:
            continue
        bi, mi = node_b[done:done + k], node_m[done:done + k]
        done += k
        nu_left, s_left = _child_nu(msgs, structure.left[bi, mi], bi,
                                    words[bi, structure.start[bi, mi]], emitted, K, NT)
        nu_right, s_right = _child_nu(msgs, structure.right[bi, mi], bi,
                                      words[bi, structure.end[bi, mi] - 1], emitted, K, NT)
        Z = nu_right.transpose(0, 1) @ Q                            # (K, k, X)
        if parent_conditioned:      # Y[k, P, A] = Σ_b Z[A, k, P, b] ν_left[k, A, b]
            Y = Z.view(NT * k, C, S) @ nu_left.transpose(0, 1).reshape(NT * k, S, 1)
            Y = Y.view(NT, k, C).permute(1, 2, 0)
        else:                       # Y[k, 0, A] = Σ_b Z[0, k, A, b] ν_left[k, 0, b]
            Y = (Z.view(k, NT, S) @ nu_left.transpose(1, 2)).transpose(1, 2)
        mu = (torch.log(Y.clamp_min(tiny)) + shift[None]
              + (s_left + s_right)[:, None, :])                     # (k, C, NT)
        msgs = msgs.index_put((bi, mi), mu)

    root_ctx = NT if parent_conditioned else 0
    is_root = structure.complete_root
    root_mu = torch.where(is_root[..., None], msgs[:, :, root_ctx, :],
                          torch.zeros((), dtype=dtype, device=device)).sum(1)  # (B, NT)
    total = torch.logsumexp(roots + root_mu, dim=-1)
    bad = (lengths < 2) | ~is_root.any(1)
    return torch.where(bad, torch.full_like(total, float("-inf")), total)


def _child_nu(msgs, child, rows, word, emitted, K, NT):
    """ν of one child of k nodes, linear and max-shifted: ((k, K, S), shift (k, K)).

    A node child's ν(a, b) is its message μ(P = a, b) (a over the K contexts); a word child's
    is p(w | t, a) over the T preterminals. The other block of S is zero.
    """
    is_node = child >= 0
    node_mu = msgs[rows, child.clamp(min=0), :K, :]                 # (k, K, NT)
    word_lp = emitted[word]                                         # (k, K, T)
    neg = torch.full((), float("-inf"), dtype=msgs.dtype, device=msgs.device)
    log_nu = torch.cat([torch.where(is_node[:, None, None], node_mu, neg),
                        torch.where(is_node[:, None, None], neg, word_lp)], dim=-1)
    s = log_nu.detach().amax(dim=-1)
    return torch.exp(log_nu - s[..., None]), s
