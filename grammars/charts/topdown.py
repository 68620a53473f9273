"""Reading trees off a chart top-down, shared by every top-down decoder (Viterbi, MBR, the exact
posterior sampler): one node per tree per step, a small stack per tree, all trees of the batch
advancing together.
"""
from __future__ import annotations

from typing import Callable

import torch

from grammars.binary_trees import BinaryTrees


def build_trees(lengths: torch.Tensor, root_labels: torch.Tensor,
                choose: Callable, max_length: int, num_nonterminals: int | None = None
                ) -> BinaryTrees:
    """Expand every tree top-down, one node per tree per step (n - 1 steps in all).

    choose(rows, i, j, A) -> (k, left_symbol, right_symbol) decides the split i < k < j of
    node [i, j) labeled A and its children's symbols, for a batch of nodes at once. Children
    of width ≥ 2 are pushed on their tree's stack; for width-1 children a symbol ≥
    num_nonterminals is recorded as preterminal symbol - num_nonterminals.
    """
    device = lengths.device
    Rn, n = lengths.shape[0], max_length
    M = max(n - 1, 0)
    spans = torch.full((Rn, M, 2), -1, dtype=torch.long, device=device)
    labels = torch.full((Rn, M), -1, dtype=torch.long, device=device)
    pre = torch.full((Rn, n), -1, dtype=torch.long, device=device)
    stack = torch.zeros(Rn, max(n, 1), 3, dtype=torch.long, device=device)
    depth = torch.zeros(Rn, dtype=torch.long, device=device)
    count = torch.zeros(Rn, dtype=torch.long, device=device)
    has_tree = lengths >= 2
    stack[:, 0, 1] = lengths
    stack[:, 0, 2] = root_labels.long()
    depth[has_tree] = 1
    for _ in range(M):
        rows = (depth > 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        depth[rows] -= 1
        node = stack[rows, depth[rows]]
        i, j, a = node.unbind(-1)
        k, left, right = choose(rows, i, j, a)
        spans[rows, count[rows]] = torch.stack([i, j], -1)
        labels[rows, count[rows]] = a
        count[rows] += 1
        for ci, cj, sym in ((k, j, right), (i, k, left)):          # left on top: pre-order
            inner = cj - ci >= 2
            r = rows[inner]
            stack[r, depth[r]] = torch.stack([ci[inner], cj[inner], sym[inner]], -1)
            depth[r] += 1
            if num_nonterminals is not None:
                leaf = ~inner & (sym >= num_nonterminals)
                pre[rows[leaf], ci[leaf]] = sym[leaf] - num_nonterminals
    return BinaryTrees(spans=spans, labels=labels, lengths=lengths.long(), preterminals=pre)
