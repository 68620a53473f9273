"""MBR decoding (Goodman 1996): the binary tree maximizing the expected number of correct spans.

A CKY over span marginals (exact ones from the inside algorithm, or estimated from sampled
trees), one vectorized step per span width; the tree is read off by `topdown.build_trees`.
"""
from __future__ import annotations

import torch

from grammars.binary_trees import BinaryTrees
from grammars.charts.topdown import build_trees


@torch.no_grad()
def mbr_decode(marginals: torch.Tensor, lengths: torch.Tensor) -> BinaryTrees:
    """The binary tree maximizing the expected number of correct spans, Σ_spans P(span).

    marginals: (B, n, n+1) span posteriors, or (B, n, n+1, NT) labeled ones, whose sum over
    labels is used and whose argmax label names each node; unlabeled input gives label 0.
    """
    labeled = marginals.dim() == 4
    spans = marginals.sum(-1) if labeled else marginals
    labels = marginals.argmax(-1) if labeled else torch.zeros_like(spans, dtype=torch.long)
    B, n = spans.shape[:2]
    lengths = lengths.to(spans.device).long()
    # best[start, width] and the same values by [end, n - width]: one strided slice per width
    BL = spans.new_zeros(B, n, n + 1)
    BR = spans.new_zeros(B, n + 1, n + 1)
    split = torch.ones(B, n, n + 1, dtype=torch.long, device=spans.device)
    for w in range(2, n + 1):
        Pw = n - w + 1
        p = torch.arange(Pw, device=spans.device)
        best, arg = (BL[:, :Pw, 1:w] + BR[:, w:, n - w + 1:n]).max(-1)
        value = spans[:, p, p + w] + best
        BL[:, :Pw, w] = value
        BR[:, w:, n - w] = value
        split[:, :Pw, w] = arg + 1

    def choose(r, i, j, a):
        k = i + split[r, i, j - i]
        left = torch.where(k - i >= 2, labels[r, i, k], -1)
        right = torch.where(j - k >= 2, labels[r, k, j], -1)
        return k, left, right

    rows = torch.arange(B, device=spans.device)
    trees = build_trees(lengths, labels[rows, 0, lengths.clamp(max=n)], choose, n)
    trees.preterminals = None
    return trees
