"""A tiny reference PCFG and the exact distributions the tree-sampler tests compare against.

ToyPCFG scores a labelled binary tree with preterminals summed out (checked against brute
force in test_tree_gflownet.py); `exact_posterior` enumerates p(z | x) of one sentence,
`all_trajectories` every (merge positions, labels) sequence, `model_tree_distribution` the
tree distribution a sampler induces, `check_tree` that a node list is a binary tree.
"""
from __future__ import annotations

import itertools
import math

import torch

from grammars.binary_trees import BinaryTrees
from tree_enumeration import all_trees


# ================================================================== a tiny reference PCFG
class ToyPCFG:
    """log p(x, z) of a random PCFG with preterminals summed out (the GFlowNet's reward).

    Children of a node are either nonterminals (their label) or words; the word case sums
    over preterminals: eff[A, x, y] = log Σ_{b,c} p(A→b c) p(x|b) p(y|c).
    """

    def __init__(self, nt: int, t: int, v: int, scale: float = 2.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        s = nt + t
        self.nt, self.t, self.v = nt, t, v
        self.roots = torch.log_softmax(scale * torch.randn(nt, generator=g), 0)
        rules = torch.log_softmax(scale * torch.randn(nt, s * s, generator=g), 1)
        self.rules = rules.view(nt, s, s)
        self.emit = torch.log_softmax(scale * torch.randn(t, v, generator=g), 1)
        expand = torch.full((nt + v, s), -math.inf)
        expand[:nt, :nt] = torch.where(torch.eye(nt, dtype=torch.bool), 0.0, -math.inf)
        expand[nt:, nt:] = self.emit.t()
        # eff[A, x, y] over child types x, y in [nonterminals | words]
        self.eff = torch.logsumexp(expand[None, :, None, :, None] + self.rules[:, None, None]
                                   + expand[None, None, :, None, :], dim=(-2, -1))

    def _node_terms(self, ids, trees: BinaryTrees):
        spans, labels = trees.spans, trees.labels
        start, end = spans[..., 0], spans[..., 1]
        valid = labels >= 0
        # left child ends at the largest node end < end among nodes sharing the start
        same = ((start[:, :, None] == start[:, None, :]) & (end[:, None, :] < end[:, :, None])
                & valid[:, None, :])
        k = torch.where(same, end[:, None, :], start[:, :, None] + 1).amax(-1)

        def child(i, j):
            hit = ((start[:, None, :] == i[..., None]) & (end[:, None, :] == j[..., None])
                   & valid[:, None, :])
            node_label = torch.where(hit, labels[:, None, :], -1).amax(-1)
            word = self.nt + ids.gather(1, i.clamp(min=0))
            return torch.where(j - i >= 2, node_label, word)

        lt, rt = child(start, k), child(k, end)
        a = labels.clamp(min=0)
        terms = self.eff[a, lt.clamp(min=0), rt.clamp(min=0)]
        return torch.where(valid, terms, 0.0)

    def partial_log_joint(self, ids, lengths, trees: BinaryTrees):
        return self._node_terms(ids, trees).sum(1)

    def log_joint(self, ids, lengths, trees: BinaryTrees):
        is_root = ((trees.spans[..., 0] == 0) & (trees.spans[..., 1] == lengths[:, None])
                   & (trees.labels >= 0))
        root = torch.where(is_root, self.roots[trees.labels.clamp(min=0)], 0.0).sum(1)
        return self.partial_log_joint(ids, lengths, trees) + root




def to_trees(node_lists, n: int) -> BinaryTrees:
    m, width = len(node_lists), max(n - 1, 1)
    spans = torch.full((m, width, 2), -1, dtype=torch.long)
    labels = torch.full((m, width), -1, dtype=torch.long)
    for r, nodes in enumerate(node_lists):
        for c, (i, j, a) in enumerate(nodes):
            spans[r, c] = torch.tensor([i, j])
            labels[r, c] = a
    return BinaryTrees(spans=spans[:, : n - 1], labels=labels[:, : n - 1],
                       lengths=torch.full((m,), n, dtype=torch.long))


def key(nodes) -> frozenset:
    return frozenset((int(i), int(j), int(a)) for i, j, a in nodes)


def tree_keys(trees: BinaryTrees) -> list[frozenset]:
    return [key(nodes) for nodes in trees.labeled_lists()]


def exact_posterior(grammar: ToyPCFG, words: list[int]):
    n = len(words)
    nodes = all_trees(0, n, grammar.nt)
    trees = to_trees(nodes, n)
    ids = torch.tensor([words] * len(nodes))
    log_r = grammar.log_joint(ids, trees.lengths, trees)
    post = torch.softmax(log_r, 0)
    return {key(t): float(p) for t, p in zip(nodes, post)}, trees, log_r


def all_trajectories(n: int, labels: list[tuple[int, ...]]):
    """Every (merge positions, labels) action sequence over n words, as trees in build order."""
    out = []
    for positions in itertools.product(*[range(n - 1 - t) for t in range(n - 1)]):
        for labs in labels:
            roots = [(i, i + 1) for i in range(n)]
            nodes = []
            for p, a in zip(positions, labs):
                (i, _), (_, j) = roots[p], roots[p + 1]
                roots[p:p + 2] = [(i, j)]
                nodes.append((i, j, a))
            out.append(nodes)
    return out


def model_tree_distribution(sampler: TreeSampler, words, nt: int):
    """P_T(x) = Σ over every trajectory to x of P_F(τ), exactly, by enumeration."""
    n = len(words)
    trajs = all_trajectories(n, list(itertools.product(range(nt), repeat=n - 1)))
    trees = to_trees(trajs, n)
    with torch.no_grad():
        log_pf, _ = sampler.log_prob_of(torch.tensor([words]), torch.tensor([n]), trees,
                                        order="given")
    dist: dict[frozenset, float] = {}
    for nodes, lp in zip(trajs, log_pf.tolist()):
        dist[key(nodes)] = dist.get(key(nodes), 0.0) + math.exp(lp)
    return dist


def l1(p: dict, q: dict) -> float:
    return sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def check_tree(nodes, n: int, nt: int):
    """A proper binary tree over n words: n-1 labeled nodes, root span, every node splits in two."""
    assert len(nodes) == max(n - 1, 0)
    spans = {(i, j) for i, j, _ in nodes}
    assert len(spans) == len(nodes)
    assert all(0 <= a < nt for _, _, a in nodes)
    if n == 1:
        return
    assert (0, n) in spans
    children = []
    for i, j, _ in nodes:
        assert 0 <= i < j <= n and j - i >= 2
        splits = [k for k in range(i + 1, j)
                  if (k - i == 1 or (i, k) in spans) and (j - k == 1 or (k, j) in spans)]
        assert len(splits) == 1, (i, j, nodes)
        children += [s for s in [(i, splits[0]), (splits[0], j)] if s[1] - s[0] >= 2]
    assert sorted(children) == sorted(s for s in spans if s != (0, n))
