"""Reference trees every grammar-induction report compares against.

Each baseline returns, per sentence, the spans of a binary tree (whole sentence included,
width-1 spans implicit), the same form as `BinaryTrees.span_lists()`.
- right / left branching: the strong English prior and its mirror;
- random: a binary tree drawn uniformly among all Catalan(n-1) shapes, seeded;
- oracle: the gold tree binarized, the ceiling a binary-tree model can reach under F1.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache
from typing import Iterable, Sequence

from gfnem_cli.engine.errors import GfnemError

Span = tuple[int, int]
BASELINES = ("right", "left", "random", "oracle")


def right_branching(lengths: Sequence[int]) -> list[list[Span]]:
    return [[(i, n) for i in range(n - 1)] for n in lengths]


def left_branching(lengths: Sequence[int]) -> list[list[Span]]:
    return [[(0, j) for j in range(n, 1, -1)] for n in lengths]


@lru_cache(maxsize=None)
def _log_catalan(k: int) -> float:
    """log of the number of binary trees with k internal nodes."""
    return math.lgamma(2 * k + 1) - math.lgamma(k + 1) - math.lgamma(k + 2)


@lru_cache(maxsize=None)
def _split_weights(n: int) -> tuple[float, ...]:
    """P(first child has k words) for a uniform binary tree over n words, k = 1..n-1."""
    logs = [_log_catalan(k - 1) + _log_catalan(n - k - 1) for k in range(1, n)]
    top = max(logs)
    return tuple(math.exp(x - top) for x in logs)


def random_trees(lengths: Sequence[int], seed: int = 0) -> list[list[Span]]:
    """Uniform over binary tree shapes: split each span by the count of trees on each side."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        spans: list[Span] = []
        stack = [(0, n)] if n >= 2 else []
        while stack:
            i, j = stack.pop()
            spans.append((i, j))
            k = i + rng.choices(range(1, j - i), weights=_split_weights(j - i))[0]
            stack.extend(s for s in ((i, k), (k, j)) if s[1] - s[0] >= 2)
        out.append(spans)
    return out


def binarize(spans: Iterable[Sequence[int]], length: int) -> list[Span]:
    """A binary tree containing every span of a (non-crossing) gold tree.

    Each n-ary node is binarized right-branching over its children. Every binary tree over n
    words has n - 1 spans, so which binarization is chosen does not change precision or recall.
    """
    nodes = sorted({(int(i), int(j)) for i, j in spans if j - i >= 2} | {(0, length)},
                   key=lambda s: (s[0], -s[1]))
    children: dict[Span, list[Span]] = {node: [] for node in nodes}
    open_nodes: list[Span] = []
    for node in nodes:                        # preorder: the parent is the innermost open node
        while open_nodes and open_nodes[-1][1] <= node[0]:
            open_nodes.pop()
        if open_nodes:
            if node[1] > open_nodes[-1][1]:
                raise GfnemError(f"gold spans cross: {open_nodes[-1]} and {node}")
            children[open_nodes[-1]].append(node)
        open_nodes.append(node)
    out: list[Span] = []
    for node in nodes:
        starts, position = [], node[0]        # where each child (node or lone word) starts
        for child in children[node]:
            starts.extend(range(position, child[0] + 1))
            position = child[1]
        starts.extend(range(position, node[1]))
        out.append(node)
        out.extend((start, node[1]) for start in starts[1:-1])
    return out


def oracle_trees(gold_spans: Sequence[Iterable[Sequence[int]]], lengths: Sequence[int]
                 ) -> list[list[Span]]:
    return [binarize(spans, n) if n >= 2 else [] for spans, n in zip(gold_spans, lengths)]


def baseline_spans(name: str, lengths: Sequence[int],
                   gold_spans: Sequence[Iterable[Sequence[int]]] | None = None,
                   seed: int = 0) -> list[list[Span]]:
    """Dispatch by name; `oracle` needs the gold spans."""
    if name == "right":
        return right_branching(lengths)
    if name == "left":
        return left_branching(lengths)
    if name == "random":
        return random_trees(lengths, seed)
    if name == "oracle":
        if gold_spans is None:
            raise GfnemError("the oracle baseline needs gold trees")
        return oracle_trees(gold_spans, lengths)
    raise GfnemError(f"unknown baseline {name!r}", hint="use " + ", ".join(BASELINES))
