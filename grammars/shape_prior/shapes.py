"""Unlabelled binary tree shapes as `BinaryTrees`: what the shape prior scores and its chains move.

A shape over n words is a binary tree's n − 1 internal spans with every label 0 (the prior
never sees nonterminals: `as_shapes` blanks a sampler's labels). The prior is trained on the
corpus's gold trees (weak supervision), which a treebank gives n-ary: `binarize` right-
binarizes each constituent with m ≥ 3 children c1 … cm into (c1 (c2 (… cm))) — adds the spans
[start(c_k), end) for k = 2 … m − 1 — the usual convention for PTB shapes (the binary synthetic
trees pass unchanged). `ShapeTable` holds a split's shapes as one padded tensor, gathered by
the rows of a training batch. `uniform_shapes` draws shapes uniformly among the Catalan
number C(n − 1) of shapes of each length (exact big-integer counts), the reference a trained
prior must prefer gold shapes to.
"""
from __future__ import annotations

import random
from functools import lru_cache

import torch

from grammars.binary_trees import BinaryTrees


def binarize(spans, n: int) -> list[tuple[int, int]]:
    """The n − 1 spans of the right-binarized tree whose constituents (width ≥ 2) are `spans`.

    The whole sentence is added when missing; crossing spans are a malformed tree (ValueError).
    """
    if n < 2:
        return []
    ends: dict[int, list[int]] = {}
    for i, j in {(int(i), int(j)) for i, j in spans} | {(0, n)}:
        if not (0 <= i and j <= n and j - i >= 2):
            raise ValueError(f"span ({i}, {j}) is not a constituent of width >= 2 in {n} words")
        ends.setdefault(i, []).append(j)
    nodes = set()
    for i, js in ends.items():
        for j in js:
            nodes.add((i, j))
            children, p = [], i
            while p < j:            # the widest constituent starting at p inside (i, j), or a word
                inner = [e for e in ends.get(p, ()) if e <= j and (p, e) != (i, j)]
                q = max(inner) if inner else p + 1
                children.append(p)
                p = q
            if p != j:
                raise ValueError(f"span ({i}, {j}) crosses another constituent")
            nodes.update((start, j) for start in children[1:-1])
    if len(nodes) != n - 1:
        raise ValueError(f"{len(nodes)} binary nodes over {n} words, expected {n - 1}")
    return sorted(nodes, key=lambda s: (s[0], -s[1]))


def shapes_from_spans(span_lists, lengths, width: int | None = None) -> BinaryTrees:
    """BinaryTrees (labels 0) from per-tree lists of exactly n − 1 binary spans."""
    lengths = torch.as_tensor(list(lengths), dtype=torch.long)
    m = width if width is not None else max(int(lengths.max()) - 1, 0) if len(lengths) else 0
    spans = torch.full((len(lengths), m, 2), -1, dtype=torch.long)
    for row, nodes in enumerate(span_lists):
        if nodes:
            spans[row, : len(nodes)] = torch.tensor(nodes, dtype=torch.long)
    labels = torch.where(spans[..., 0] >= 0, 0, -1)
    return BinaryTrees(spans=spans, labels=labels, lengths=lengths)


def as_shapes(trees: BinaryTrees) -> BinaryTrees:
    """The same trees with every present label 0: the shape alone."""
    labels = torch.where(trees.labels >= 0, torch.zeros_like(trees.labels), -1)
    return BinaryTrees(spans=trees.spans, labels=labels, lengths=trees.lengths)


def pad_nodes(trees: BinaryTrees, width: int) -> BinaryTrees:
    """`width` node columns: the first n − 1 kept (they hold every node), the rest -1."""
    have = trees.labels.shape[1]
    if have >= width:
        return BinaryTrees(spans=trees.spans[:, :width], labels=trees.labels[:, :width],
                           lengths=trees.lengths)
    extra = width - have
    b = trees.labels.shape[0]
    spans = torch.cat([trees.spans, trees.spans.new_full((b, extra, 2), -1)], 1)
    labels = torch.cat([trees.labels, trees.labels.new_full((b, extra), -1)], 1)
    return BinaryTrees(spans=spans, labels=labels, lengths=trees.lengths)


def take_rows(trees: BinaryTrees, rows: torch.Tensor) -> BinaryTrees:
    return BinaryTrees(spans=trees.spans[rows], labels=trees.labels[rows],
                       lengths=trees.lengths[rows])


def where_rows(mask: torch.Tensor, a: BinaryTrees, b: BinaryTrees) -> BinaryTrees:
    """Row by row: a where mask, else b (same node width)."""
    return BinaryTrees(spans=torch.where(mask[:, None, None], a.spans, b.spans),
                       labels=torch.where(mask[:, None], a.labels, b.labels),
                       lengths=torch.where(mask, a.lengths, b.lengths))


class ShapeTable:
    """The gold shapes of one split, one row per sentence (n − 1 nodes first, -1 padded)."""

    def __init__(self, gold_spans, lengths, where: object = None):
        lengths = [int(n) for n in lengths]
        nodes = []
        for row, (spans, n) in enumerate(zip(gold_spans, lengths)):
            try:
                nodes.append(binarize(spans, n))
            except ValueError as exc:
                raise ValueError(f"{where or 'gold trees'}: sentence {row + 1}: {exc}") from None
        self.shapes = shapes_from_spans(nodes, lengths)

    def __len__(self) -> int:
        return len(self.shapes)

    def get(self, rows: torch.Tensor, device=None) -> BinaryTrees:
        """The shapes of these rows, trimmed to their longest sentence."""
        picked = take_rows(self.shapes, rows.long().cpu())
        width = max(int(picked.lengths.max()) - 1, 0) if len(picked) else 0
        picked = pad_nodes(picked, width)
        if device is None:
            return picked
        return BinaryTrees(spans=picked.spans.to(device), labels=picked.labels.to(device),
                           lengths=picked.lengths.to(device))


@lru_cache(maxsize=None)
def catalan(m: int) -> int:
    """Binary tree shapes with m internal nodes (m + 1 leaves), exactly."""
    if m <= 1:
        return 1
    return sum(catalan(k) * catalan(m - 1 - k) for k in range(m))


def _uniform_nodes(i: int, j: int, rng: random.Random, out: list) -> None:
    stack = [(i, j)]
    while stack:
        i, j = stack.pop()
        n = j - i
        if n < 2:
            continue
        out.append((i, j))
        r = rng.randrange(catalan(n - 1))       # left part of k words: C(k−1) · C(n−k−1) shapes
        for k in range(1, n):
            r -= catalan(k - 1) * catalan(n - k - 1)
            if r < 0:
                break
        stack.extend([(i, i + k), (i + k, j)])


def uniform_shapes(lengths, seed: int = 0) -> BinaryTrees:
    """One shape per length, uniform over the C(n − 1) shapes of n words (seeded, exact)."""
    rng = random.Random(seed)
    nodes = []
    for n in lengths:
        row: list = []
        _uniform_nodes(0, int(n), rng, row)
        nodes.append(sorted(row, key=lambda s: (s[0], -s[1])))
    return shapes_from_spans(nodes, lengths)


def right_branching_shapes(lengths) -> BinaryTrees:
    return shapes_from_spans([[(k, int(n)) for k in range(int(n) - 1)] for n in lengths],
                             lengths)
