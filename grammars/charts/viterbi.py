"""Viterbi: the best labeled tree of a CNF PCFG, by the inside recursion in the max-plus semiring.

One vectorized step per span width (Goodman 1999), then the tree is read off top-down with
`topdown.build_trees`: the best labeled tree with its preterminals and its joint
log-probability, equal to torch-struct's `SentCFG.max`. Max-plus has no BLAS kernel, so the
NT·NT block is cut in two maxima: first over the right child's label once per *cell*
(H(cell)[B, A] = max_C R[A,B,C] + V(cell)[C]), then over the left label and split per parent,
which keeps the work at O(NT³) per cell + O(NT²) per split. Every maximum is a
`max_plus_contract` (a running max in cache-sized blocks, never a materialized candidate
tensor), and the NT·NT splits of one width are one contraction over strided views (issue 17).
"""
from __future__ import annotations

import torch

from grammars.charts.pcfg_params import (PCFGParams, batch_rows, check_lengths, masked_terms,
                                         shared_rules)
from grammars.charts.semirings import max_plus, max_plus_contract, max_plus_qfirst
from grammars.charts.topdown import build_trees
from grammars.binary_trees import BinaryTrees

NEG_INF = float("-inf")
# Elements of the largest H chart (NT, B, n+1, n+1, NT) built at once: 256 MiB in float32.
CHART_BUDGET = 1 << 26


@torch.no_grad()
def viterbi(params: PCFGParams) -> tuple[torch.Tensor, BinaryTrees]:
    """(max_tree log p(tree, words) (B,), the argmax trees with labels and preterminals).

    1-word sentences have no CNF tree: score -inf, no nodes, preterminal = best emission.
    The batch is cut into chunks whose H chart stays under CHART_BUDGET elements.
    """
    B, n, NT = params.batch_size, params.max_length, params.num_nonterminals
    chunk = max(1, CHART_BUDGET // max(1, NT * NT * (n + 1) ** 2))
    if B <= chunk:
        return _viterbi(params)
    parts = [_viterbi(batch_rows(params, s, min(B, s + chunk))) for s in range(0, B, chunk)]
    trees = [t for _, t in parts]
    return torch.cat([s for s, _ in parts]), BinaryTrees(
        spans=torch.cat([t.spans for t in trees]), labels=torch.cat([t.labels for t in trees]),
        lengths=torch.cat([t.lengths for t in trees]),
        preterminals=torch.cat([t.preterminals for t in trees]))


def _viterbi(params: PCFGParams) -> tuple[torch.Tensor, BinaryTrees]:
    lengths = check_lengths(params)
    terms = masked_terms(params, lengths)
    B, n, T = terms.shape
    NT = params.num_nonterminals
    S = NT + T
    R = _rule_table(params)                                          # (1 or B, NT, S, S)
    Bb = R.shape[0]
    left_leaf, right_leaf, pair_leaf = _leaf_tables(terms, R, NT)
    nn_rules = R[:, :, :NT, :NT].transpose(1, 2).reshape(Bb, NT * NT, NT)  # [(B, A), C]

    # best scores by (start, width) and the right-child tables H by (label, end, n - width),
    # the two layouts of inside.py: the children of every NT·NT split of a width are then one
    # strided view of each (no copies), H with its contracted label first
    VL = terms.new_empty(B, n, n + 1, NT)
    HR = terms.new_empty(NT, B, n + 1, n + 1, NT)
    split = torch.ones(B, n, n + 1, NT, dtype=torch.long, device=terms.device)  # [i, w, A]
    for w in range(2, n + 1):
        Pw = n - w + 1
        if w == 2:
            best = max_plus_contract(terms[:, :Pw], pair_leaf[:, 1:])
        else:
            best, arg = _best_split(VL, HR, left_leaf, right_leaf, w)
            split[:, :Pw, w] = arg
        VL[:, :Pw, w] = best
        if w <= n - 2:                     # only cells that can be a right child of width ≥ 2 + 2
            H = max_plus(best, nn_rules).view(B, Pw, NT, NT)               # [B, A] per cell
            HR[:, :, w:, n - w] = H.permute(2, 0, 1, 3)

    # extended chart over all S symbols: NT scores for width ≥ 2, emissions at width 1
    ext = torch.full((B, n, n + 1, S), NEG_INF, dtype=terms.dtype, device=terms.device)
    pos = torch.arange(n, device=terms.device)
    ext[:, pos, pos + 1, NT:] = terms
    for w in range(2, n + 1):
        p = torch.arange(n - w + 1, device=terms.device)
        ext[:, p, p + w, :NT] = VL[:, :n - w + 1, w]

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


def _leaf_tables(terms, R, NT):
    """Preterminal children maxed out once per position (max-plus "leaf tables"), laid out
    [child label, parent] like every table a split reads: left [C, A] = max_t e_i[t] +
    R[A,t,C], right [B, A] = max_u R[A,B,u] + e_j[u], pair [t, A] = max_u R[A,t,u] + e_j[u].

    With one grammar for the batch a table depends on the emission row only, so it is built
    once per distinct row (a repeated word, the masked padding) and gathered: exact, and it
    saves most of the work on real text, where a few words make up much of every batch."""
    B, n, T = terms.shape
    Bb = R.shape[0]
    rows, inverse = terms, None
    if Bb == 1:
        rows, inverse = torch.unique(terms.reshape(B * n, T), dim=0, return_inverse=True)
        rows = rows[None]
    blocks = (R[:, :, NT:, :NT].permute(0, 3, 1, 2).reshape(Bb, NT * NT, T),
              R[:, :, :NT, NT:].transpose(1, 2).reshape(Bb, NT * NT, T),
              R[:, :, NT:, NT:].transpose(1, 2).reshape(Bb, T * NT, T))
    tables = [max_plus(rows, blk) for blk in blocks]
    if inverse is not None:
        tables = [t[0, inverse] for t in tables]
    return tuple(t.view(B, n, -1, NT) for t in tables)


def _best_split(VL, HR, left_leaf, right_leaf, w):
    """Best score and split of each cell of width w ≥ 3 over k = 1 (leaf · NT), 2..w-2
    (NT · NT, through H) and w-1 (NT · leaf), each a max-plus contraction over the child's
    label; the first best k wins ties."""
    n = VL.shape[1]
    Pw = n - w + 1
    best = max_plus_contract(VL[:, 1:1 + Pw, w - 1], left_leaf[:, :Pw])          # k = 1
    arg = torch.ones_like(best, dtype=torch.long)
    candidates = []
    if w >= 4:                                                                    # (B, Pw, K, NT)
        mid, k = max_plus_qfirst(VL[:, :Pw, 2:w - 1], HR[:, :, w:, n - w + 2:n - 1]).max(2)
        candidates.append((mid, k + 2))
    candidates.append((max_plus_contract(VL[:, :Pw, w - 1], right_leaf[:, w - 1:]), w - 1))
    for cand, k in candidates:
        better = cand > best
        arg = torch.where(better, k, arg)
        best = torch.where(better, cand, best)
    return best, arg
