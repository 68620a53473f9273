"""log p_θ(x, z) of (partial) labeled binary forests, node by node, with preterminals summed out.

Every grammar here factors over internal nodes. A node labelled A over [s, e) whose left child
is B (a nonterminal node) or the word w_s (a leaf), and whose right child is C or w_{e-1},
contributes
    log Σ_{b ∈ left, c ∈ right} p(A → b c | ctx) · Π_{leaf children} p(w | t, ectx)
where a leaf child's symbol t ranges over the T preterminals (summed out, DESIGN.md §5) and a node
child is its label. The context is the parent's label (ROOT for the root) for the
non-context-free grammar, and a single dummy context for (compound) PCFGs; the emission
context is A itself for the NCFG (a preterminal is conditioned on the nonterminal that
produced it) and a dummy for PCFGs. Plus log p(root = A) once the tree is complete.

A *partial forest* is what a bottom-up tree sampler holds mid-trajectory (DESIGN.md §5): some
nodes, each with both children present (a node or a word), roots not yet merged. A node's
term is *determined* once its context is: always for context-free grammars; for the NCFG
only once the node has a parent, or it is the completed root (context ROOT). The root prior
log p(root = A) counts only when one node spans the whole sentence. So the partial score of
a complete tree is exactly log p(x, z), and the partial score only grows in determined terms
along a trajectory — the "forward-looking" part of the GFlowNet's flows (DESIGN.md §3).

Everything is vectorized over all nodes of all trees, in shapes fixed by the batch's (B, M)
alone, so that a GPU never waits for a count: parents and children come from span
containment with tensor ops, and each node gathers the rule entries of every kind of
children (one entry, a T-vector each side, the T x T preterminal block) and keeps those its
children allow, never a whole (S, S) table per node.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gfnem_cli.engine.device_checks import expect
from grammars.binary_trees import BinaryTrees


@dataclass
class ForestStructure:
    """Parent/child links of the nodes of a batch of (partial) forests; -1 = none."""
    present: torch.Tensor        # (B, M) bool: a real node (label >= 0)
    start: torch.Tensor          # (B, M) long
    end: torch.Tensor            # (B, M) long (exclusive)
    parent: torch.Tensor         # (B, M) long: index of the smallest enclosing node, or -1
    left: torch.Tensor           # (B, M) long: left child node, or -1 when it is the word w_start
    right: torch.Tensor          # (B, M) long: right child node, or -1 when it is w_{end-1}
    complete_root: torch.Tensor  # (B, M) bool: present and spanning the whole sentence
    lengths: torch.Tensor        # (B,) sentence lengths


def forest_structure(trees: BinaryTrees, validate: bool = True) -> ForestStructure:
    """Recover parent and children of every node from the spans alone (node order is free).

    The parent of a node is the narrowest other node containing it; a child that is no node is
    a single word. `validate` checks that the two children of each node meet (one host sync),
    which catches top-down partial trees and overlapping spans, neither of which this scores.
    """
    spans, labels = trees.spans, trees.labels
    lengths = trees.lengths.to(labels.device)
    B, M = labels.shape
    device = labels.device
    present = labels >= 0
    start = torch.where(present, spans[..., 0], torch.zeros_like(labels))
    end = torch.where(present, spans[..., 1], torch.zeros_like(labels))
    if M == 0:
        empty = torch.zeros(B, 0, dtype=torch.long, device=device)
        return ForestStructure(present, start, end, empty, empty, empty, present, lengths)
    # contains[b, m, q]: node q strictly encloses node m
    contains = ((start[:, None, :] <= start[:, :, None]) & (end[:, :, None] <= end[:, None, :])
                & present[:, None, :] & present[:, :, None]
                & ~torch.eye(M, dtype=torch.bool, device=device)[None])
    width = (end - start)[:, None, :].expand(B, M, M)
    big = torch.full_like(width, 1 << 30)
    narrowest = torch.where(contains, width, big).argmin(dim=2)
    parent = torch.where(contains.any(dim=2), narrowest, torch.full_like(narrowest, -1))

    # children by scattering each node into its parent's slot; column M is a sink for non-children
    has_parent = parent >= 0
    safe_parent = parent.clamp(min=0)
    parent_start = start.gather(1, safe_parent)
    is_left = has_parent & (start == parent_start)
    is_right = has_parent & ~is_left
    sink = torch.full_like(parent, M)
    node_index = torch.arange(M, device=device).expand(B, M)
    left = torch.full((B, M + 1), -1, dtype=torch.long, device=device)
    right = torch.full((B, M + 1), -1, dtype=torch.long, device=device)
    left.scatter_(1, torch.where(is_left, parent, sink), node_index)
    right.scatter_(1, torch.where(is_right, parent, sink), node_index)
    left, right = left[:, :M], right[:, :M]
    complete_root = present & (start == 0) & (end == lengths[:, None])

    if validate:
        left_end = torch.where(left >= 0, end.gather(1, left.clamp(min=0)), start + 1)
        right_start = torch.where(right >= 0, start.gather(1, right.clamp(min=0)), end - 1)
        bad = present & ((left_end != right_start) | (end - start < 2) | (end > lengths[:, None]))
        def message() -> str:
            b, m = (int(v) for v in bad.nonzero()[0])
            return (f"tree {b}: node {m} span ({int(start[b, m])}, {int(end[b, m])}) does not "
                    "have two adjacent children (a node or a single word) inside the sentence; "
                    "partial forests must be built bottom-up")
        expect(~bad, message)                     # on a GPU: checked without a wait
    return ForestStructure(present, start, end, parent, left, right, complete_root, lengths)


def forest_node_terms(structure: ForestStructure, labels: torch.Tensor, words: torch.Tensor,
                      roots: torch.Tensor, rules: torch.Tensor, emissions: torch.Tensor,
                      group: torch.Tensor, parent_conditioned: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-node log terms, which of them are determined, and the root prior.

    labels (B, M) long, -1 padded; words (B, n) long, padding already made gatherable;
    roots (G, NT); rules (G, C, NT, S, S) contiguous (C = NT + 1 contexts, ROOT last, when
    `parent_conditioned`, else C = 1); emissions (G, CE, T, V) (CE = NT when
    `parent_conditioned`, else 1); group (B,) long picks each tree's grammar (all zeros for a
    shared grammar, arange(B) for per-sentence ones). All log-probabilities.
    Returns node_terms (B, M) (0 where not present), determined (B, M) bool, root_term (B,)
    (0 unless the tree is complete).
    """
    B, M = labels.shape
    G, C, NT, S, _ = rules.shape
    device = labels.device
    dtype = rules.dtype
    present = structure.present
    node_terms = torch.zeros(B, M, dtype=dtype, device=device)
    if parent_conditioned:
        determined = present & ((structure.parent >= 0) | structure.complete_root)
    else:
        determined = present.clone()
    root_label = torch.where(structure.complete_root, labels, torch.zeros_like(labels))
    root_logp = roots[group].gather(1, root_label)            # (B, M)
    root_term = torch.where(structure.complete_root, root_logp, torch.zeros_like(root_logp)).sum(1)
    if M == 0:
        return node_terms, determined, root_term
    # Dense and fixed-shape: every node gets the term of each of the four rule kinds (absent
    # nodes and other kinds read clamped, valid entries) and keeps its own by `where`. No
    # selection sized by the data, so no GPU wait; a kind's scores are zeroed outside its
    # nodes before the logsumexp, so an entry there that is -inf cannot put a NaN into the
    # gradients.
    A = labels.clamp(min=0)
    g = group[:, None].expand(B, M)
    if parent_conditioned:
        parent = structure.parent
        ctx = torch.where(parent >= 0, labels.gather(1, parent.clamp(min=0)),
                          torch.full_like(A, NT))
        ectx = A
    else:
        ctx = torch.zeros_like(A)
        ectx = ctx
    l_leaf, r_leaf = structure.left < 0, structure.right < 0
    lsym = labels.gather(1, structure.left.clamp(min=0)).clamp(min=0)
    rsym = labels.gather(1, structure.right.clamp(min=0)).clamp(min=0)
    lword = words.gather(1, structure.start)
    rword = words.gather(1, (structure.end - 1).clamp(min=0))

    table = rules.reshape(G * C * NT, S, S)
    row = (g * C + ctx) * NT + A                              # the row p(A -> . . | ctx)
    l_emit = emissions[g, ectx, :, lword]                     # (B, M, T)
    r_emit = emissions[g, ectx, :, rword]

    def summed(kind: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """logsumexp over the trailing axes of `scores` (a fresh buffer, zeroed in place
        outside the nodes of `kind`)."""
        mask = kind.reshape(*kind.shape, *([1] * (scores.dim() - 2)))
        return torch.logsumexp(scores.masked_fill_(~mask, 0.0).flatten(2), dim=2)

    both = present & ~l_leaf & ~r_leaf                        # A -> B C, both nodes
    left_t = present & l_leaf & ~r_leaf                       # A -> t C, t summed out
    right_t = present & ~l_leaf & r_leaf                      # A -> B t
    leaves = present & l_leaf & r_leaf                        # A -> t t'
    terms = torch.where(both, table[row, lsym, rsym], node_terms)
    terms = torch.where(left_t, summed(left_t, table[row, NT:, rsym] + l_emit), terms)
    terms = torch.where(right_t, summed(right_t, table[row, lsym, NT:] + r_emit), terms)
    # A -> t t' spans two words, and such spans of a row are disjoint: at most n // 2 of them,
    # so the T x T blocks are read for the K = n // 2 slots holding them (topk: fixed shape)
    K = min(M, words.shape[1] // 2)
    expect(leaves.sum(1) <= K, "more than n // 2 two-word nodes in a row: their spans overlap")
    slot = torch.topk(leaves.int(), K, dim=1, sorted=False).indices              # (B, K)

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x.gather(1, slot.reshape(*slot.shape, *([1] * (x.dim() - 2))).expand(
            *slot.shape, *x.shape[2:]))
    pair = (table[:, NT:, NT:][pick(row)] + pick(l_emit)[..., :, None]
            ).add_(pick(r_emit)[..., None, :])                # in place: one T x T buffer
    pair_terms = summed(pick(leaves), pair)                                      # (B, K)
    pair_terms = torch.zeros_like(terms).scatter(1, slot, pair_terms)
    terms = torch.where(leaves, pair_terms, terms)
    return terms, determined, root_term


def forest_log_prob(structure: ForestStructure, labels, words, roots, rules, emissions, group,
                    parent_conditioned: bool) -> torch.Tensor:
    """Σ of the determined node terms + the root prior: (B,). log p(x, z) for complete trees.

    A 1-word sentence gets -inf: a grammar in Chomsky normal form cannot generate it (as
    `grammars.charts.inside.log_partition`); training code drops such sentences.
    """
    terms, determined, root_term = forest_node_terms(
        structure, labels, words, roots, rules, emissions, group, parent_conditioned)
    total = torch.where(determined, terms, torch.zeros_like(terms)).sum(1) + root_term
    one_word = (structure.lengths < 2).to(total.device)
    return torch.where(one_word, torch.full_like(total, float("-inf")), total)
