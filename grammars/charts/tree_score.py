"""log p(tree, words) of nonterminal trees with the preterminals summed out.

The tree GFlowNet builds nonterminal structure only, so its reward must marginalize the
preterminal of every leaf (Kim et al. 2019's PCFG emits words from T preterminals):

  log p(z, x) = log p(root = A_root) + Σ_nodes log Σ_{preterminal children} p(A -> B C) p(words)

A node's term depends on which children are leaves: NT·NT reads one rule; T·NT and NT·T sum
over the T preterminals of the leaf (a logsumexp over T); T·T (width 2) over T×T. Every node
of every tree is scored at once, each case on its own subset of nodes; exact and
differentiable in the grammar. log Σ_z p(z, x) equals the inside log-partition.
"""
from __future__ import annotations

import torch

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
    grid = torch.full((B, n, n + 1), -1, dtype=torch.long, device=device)
    brow = torch.arange(B, device=device)[:, None].expand(B, Mx)
    grid[brow[live], i[live], j[live]] = a[live]
    left_label, right_label = grid[brow, i, k], grid[brow, k, j]
    left_leaf, right_leaf = (k - i) == 1, (j - k) == 1

    def rule(bb, aa, x, y):
        """log p(aa -> x y) for index tensors that broadcast together."""
        return shared[aa, x, y] if shared is not None else params.rules[bb, aa, x, y]

    t = torch.arange(T, device=device) + NT
    node_score = terms.new_zeros(B, Mx)
    cases = (live & ~left_leaf & ~right_leaf, live & left_leaf & ~right_leaf,
             live & ~left_leaf & right_leaf, live & left_leaf & right_leaf)
    for case, mask in enumerate(cases):
        bb, mm = mask.nonzero(as_tuple=True)
        if bb.numel() == 0:
            continue
        ai, ii, kk, jj = a[bb, mm], i[bb, mm], k[bb, mm], j[bb, mm]
        if case == 0:        # NT · NT
            s = rule(bb, ai, left_label[bb, mm], right_label[bb, mm])
        elif case == 1:      # T · NT: the left leaf's preterminal summed out
            s = (rule(bb[:, None], ai[:, None], t[None, :], right_label[bb, mm][:, None])
                 + terms[bb, ii]).logsumexp(-1)
        elif case == 2:      # NT · T
            s = (rule(bb[:, None], ai[:, None], left_label[bb, mm][:, None], t[None, :])
                 + terms[bb, kk]).logsumexp(-1)
        else:                # T · T
            pair = rule(bb[:, None, None], ai[:, None, None], t[None, :, None], t[None, None, :])
            s = (pair + terms[bb, ii][:, :, None] + terms[bb, ii + 1][:, None, :]
                 ).flatten(1).logsumexp(-1)
        node_score = node_score.index_put((bb, mm), s)

    rows = torch.arange(B, device=device)
    root_label = grid[rows, 0, lengths].clamp(min=0)
    total = params.roots[rows, root_label] + node_score.sum(-1)
    return torch.where(lengths >= 2, total, torch.full_like(total, float("-inf")))
