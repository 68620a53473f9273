"""Viterbi: the best labeled tree of a CNF PCFG, by the inside recursion in the max-plus semiring.

One vectorized step per span width (Goodman 1999), then the tree is read off top-down with
`topdown.build_trees`: the best labeled tree with its preterminals and its joint
log-probability, equal to torch-struct's `SentCFG.max`. Max-plus has no BLAS kernel, so the
NT·NT block is cut in two maxima: first over the right child's label once per *cell*
(H(cell)[A, B] = max_C R[A,B,C] + V(cell)[C]), then over the left label and split per parent,
which keeps the work at O(NT³) per cell + O(NT²) per split.
"""
from __future__ import annotations

import torch

from grammars.charts.pcfg_params import PCFGParams, check_lengths, masked_terms, shared_rules
from grammars.charts.semirings import max_plus
from grammars.charts.topdown import build_trees
from grammars.binary_trees import BinaryTrees

NEG_INF = float("-inf")


@torch.no_grad()
def viterbi(params: PCFGParams) -> tuple[torch.Tensor, BinaryTrees]:
    """(max_tree log p(tree, words) (B,), the argmax trees with labels and preterminals).

    1-word sentences have no CNF tree: score -inf, no nodes, preterminal = best emission.
    """
    lengths = check_lengths(params)
    terms = masked_terms(params, lengths)
    B, n, T = terms.shape
    NT = params.num_nonterminals
    S = NT + T
    R = _rule_table(params)                                          # (1 or B, NT, S, S)
    Bb = R.shape[0]
    # Preterminal children maxed out once per position (max-plus "leaf tables").
    left_leaf = max_plus(terms, R[:, :, NT:, :NT].permute(0, 1, 3, 2).reshape(Bb, NT * NT, T))
    left_leaf = left_leaf.view(B, n, NT, NT)                 # [A, C]: max_t e_i[t] + R[A,t,C]
    right_leaf = max_plus(terms, R[:, :, :NT, NT:].reshape(Bb, NT * NT, T)).view(B, n, NT, NT)
    pair_leaf = max_plus(terms, R[:, :, NT:, NT:].reshape(Bb, NT * T, T)).view(B, n, NT, T)
    nn_rules = R[:, :, :NT, :NT].reshape(Bb, NT * NT, NT)            # [(A, B), C]

    V: dict[int, torch.Tensor] = {}       # width -> best score per (start, A), (B, n-w+1, NT)
    H: dict[int, torch.Tensor] = {}       # width -> max_C R[A,B,C] + V[C], (B, n-w+1, NT, NT)
    split = torch.ones(B, n, n + 1, NT, dtype=torch.long, device=terms.device)  # [i, w, A]
    for w in range(2, n + 1):
        Pw = n - w + 1
        if w == 2:
            best = (terms[:, :Pw, None, :] + pair_leaf[:, 1:]).amax(-1)
            arg = torch.ones_like(best, dtype=torch.long)
        else:
            best = (left_leaf[:, :Pw] + V[w - 1][:, 1:, None, :]).amax(-1)          # k = 1
            arg = torch.ones_like(best, dtype=torch.long)
            for k in range(2, w - 1):                                                 # NT · NT
                cand = (V[k][:, :Pw, None, :] + H[w - k][:, k:k + Pw]).amax(-1)
                arg = torch.where(cand > best, k, arg)
                best = torch.maximum(best, cand)
            cand = (V[w - 1][:, :Pw, None, :] + right_leaf[:, w - 1:]).amax(-1)      # k = w-1
            arg = torch.where(cand > best, w - 1, arg)
            best = torch.maximum(best, cand)
        V[w] = best
        split[:, :Pw, w] = arg
        if w <= n - 2:                     # only cells that can be a right child of width ≥ 2 + 2
            H[w] = max_plus(best, nn_rules).view(B, Pw, NT, NT)

    # extended chart over all S symbols: NT scores for width ≥ 2, emissions at width 1
    ext = torch.full((B, n, n + 1, S), NEG_INF, dtype=terms.dtype, device=terms.device)
    pos = torch.arange(n, device=terms.device)
    ext[:, pos, pos + 1, NT:] = terms
    for w in range(2, n + 1):
        p = torch.arange(n - w + 1, device=terms.device)
        ext[:, p, p + w, :NT] = V[w]

    rows = torch.arange(B, device=terms.device)
    top = ext[rows, 0, lengths, :NT] + params.roots
    scores, root_labels = top.max(-1)
    scores = torch.where(lengths >= 2, scores, torch.full_like(scores, NEG_INF))

    def choose(r, i, j, a):
        k = i + split[r, i, j - i, a]
        cand = R[r % Bb, a] + ext[r, i, k, :, None] + ext[r, k, j, None, :]      # (rows, S, S)
        flat = cand.reshape(len(r), S * S).argmax(-1)
        return k, flat // S, flat % S

    trees = build_trees(lengths, root_labels, choose, n, num_nonterminals=NT)
    single = lengths == 1
    trees.preterminals[single, 0] = terms[single, 0].argmax(-1)
    return scores, trees


def _rule_table(params: PCFGParams) -> torch.Tensor:
    """Rules as (1, NT, S, S) for a shared grammar, else (B, NT, S, S); never copied."""
    shared = shared_rules(params.rules)
    return shared[None] if shared is not None else params.rules
