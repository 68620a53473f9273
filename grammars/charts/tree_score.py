"""log p(tree, words) of nonterminal trees with the preterminals summed out.

The tree GFlowNet builds nonterminal structure only, so its reward must marginalize the
preterminal of every leaf (Kim et al. 2019's PCFG emits words from T preterminals):

  log p(z, x) = log p(root = A_root) + Σ_nodes log Σ_{preterminal children} p(A -> B C) p(words)

A node's term depends on which children are leaves: NT·NT reads one rule; T·NT and NT·T sum
over the T preterminals of the leaf (a logsumexp over T); T·T (width 2) over T×T. Every node
of every tree is scored at once, in shapes fixed by the batch's (B, n, Mx) alone so that a GPU
never waits for a count (issue 14): each node computes every case's term and keeps its own by
`where`, and the T×T blocks are read for n // 2 slots a row (at most that many nodes span two
words). Exact and differentiable in the grammar; log Σ_z p(z, x) equals the inside
log-partition.
"""
from __future__ import annotations

import torch

from gfnem_cli.engine.device_checks import expect
from grammars.binary_trees import BinaryTrees
from grammars.charts.pcfg_params import check_lengths, masked_terms, shared_rules
from grammars.charts.pcfg_params import PCFGParams


def tree_log_prob(params: PCFGParams, trees: BinaryTrees) -> torch.Tensor:
    """(B,) log p(tree_b, words_b), preterminals summed out; -inf for 1-word sentences.

    Row b of `trees` is scored under row b of `params` (expand params to score several
    trees per sentence); trees must be valid binary trees over their sentence.
    """
    lengths = check_lengths(params)
    terms = masked_terms(params, lengths)
    B, n, T = terms.shape
    NT = params.num_nonterminals
    device = terms.device
    spans, labels = trees.spans.to(device), trees.labels.to(device)
    Mx = spans.shape[1]
    shared = shared_rules(params.rules)

    live = torch.arange(Mx, device=device)[None, :] < (lengths - 1)[:, None]     # (B, Mx)
    i = torch.where(live, spans[..., 0], 0)
    j = torch.where(live, spans[..., 1], 1)
    a = torch.where(live, labels, 0)
    # The split of node [i, j) is the end of its left child: the widest other node starting at i
    # and ending before j; without one, the left child is the leaf i.
    inner = (i[:, :, None] == i[:, None, :]) & (j[:, None, :] < j[:, :, None]) & live[:, None, :]
    k = torch.where(inner, j[:, None, :], -1).amax(-1)
    k = torch.where(k < 0, i + 1, k)
    # labels by span: each live node writes its cell, the others a sink column past the grid
    # (n + 1 rows: the dummy child [1, 1) of a dead slot lies inside even when n = 1)
    cells = (n + 1) * (n + 1)
    grid = torch.full((B, cells + 1), -1, dtype=torch.long, device=device)
    grid.scatter_(1, torch.where(live, i * (n + 1) + j, cells), a)

    def label(x, y):
        """The label of node [x, y) (-1 where there is none)."""
        return grid.gather(1, x * (n + 1) + y)
    left_label, right_label = label(i, k), label(k, j)
    left_leaf, right_leaf = (k - i) == 1, (j - k) == 1

    brow = torch.arange(B, device=device)[:, None].expand(B, Mx)

    def rule(bb, aa, *children):
        """log p(aa -> . .) in row bb: index tensors that broadcast together, then the two
        children's indices or slices (a slice reads a whole block per node: one gather)."""
        return shared[(aa, *children)] if shared is not None else params.rules[(bb, aa, *children)]

    def summed(mask, scores):
        """logsumexp over the trailing axes of `scores` (a fresh buffer, zeroed in place
        outside `mask`, so that a -inf entry read by a node of another case cannot put a NaN
        into the gradients)."""
        mask = mask.reshape(*mask.shape, *([1] * (scores.dim() - 2)))
        return scores.masked_fill_(~mask, 0.0).flatten(2).logsumexp(-1)

    t = slice(NT, None)                                          # the preterminals
    lsym, rsym = left_label.clamp(min=0), right_label.clamp(min=0)
    both = live & ~left_leaf & ~right_leaf                                       # NT · NT
    left_t = live & left_leaf & ~right_leaf          # T · NT: the leaf's preterminal summed out
    right_t = live & ~left_leaf & right_leaf                                     # NT · T
    pairs = live & left_leaf & right_leaf                                        # T · T
    node_score = torch.where(both, rule(brow, a, lsym, rsym), terms.new_zeros(()))
    node_score = torch.where(left_t, summed(left_t, rule(brow, a, t, rsym) + terms[brow, i]),
                             node_score)
    node_score = torch.where(right_t, summed(right_t, rule(brow, a, lsym, t)
                                             + terms[brow, j - 1]), node_score)
    K = min(Mx, n // 2)
    expect(pairs.sum(1) <= K, "more than n // 2 two-word nodes in a tree: not a binary tree")
    slot = torch.topk(pairs.int(), K, dim=1, sorted=False).indices                # (B, K)
    sb, sa, si = brow[:, :K], a.gather(1, slot), i.gather(1, slot)
    pair = (rule(sb, sa, t, t) + terms[sb, si][..., :, None]).add_(terms[sb, si + 1][..., None, :])
    pair_score = terms.new_zeros(B, Mx).scatter(1, slot, summed(pairs.gather(1, slot), pair))
    node_score = torch.where(pairs, pair_score, node_score)

    rows = torch.arange(B, device=device)
    root_label = label(torch.zeros_like(lengths)[:, None], lengths[:, None])[:, 0].clamp(min=0)
    total = params.roots[rows, root_label] + node_score.sum(-1)
    return torch.where(lengths >= 2, total, torch.full_like(total, float("-inf")))
