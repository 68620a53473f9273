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

Everything is vectorized over all nodes of all trees: parents and children come from span
containment with tensor ops, and each node gathers only the rule entries its children allow
(one entry, a T-vector, or the T x T preterminal block), never a whole (S, S) table per node.
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
    # the nodes of each rule kind are selected by mask: empty selections flow through, so no
    # kind is guarded by reading the device (a GPU still waits once per `nonzero`)

    bi, mi = present.nonzero(as_tuple=True)                   # one row per real node
    A = labels[bi, mi]
    g = group[bi]
    par = structure.parent[bi, mi]
    if parent_conditioned:
        ctx = torch.where(par >= 0, labels[bi, par.clamp(min=0)], torch.full_like(A, NT))
        ectx = A
    else:
        ctx = torch.zeros_like(A)
        ectx = torch.zeros_like(A)
    lnode, rnode = structure.left[bi, mi], structure.right[bi, mi]
    lsym = torch.where(lnode >= 0, labels[bi, lnode.clamp(min=0)], torch.full_like(A, -1))
    rsym = torch.where(rnode >= 0, labels[bi, rnode.clamp(min=0)], torch.full_like(A, -1))
    lword = words[bi, structure.start[bi, mi]]
    rword = words[bi, structure.end[bi, mi] - 1]

    table = rules.reshape(G * C * NT, S, S)
    row = (g * C + ctx) * NT + A                              # the row p(A -> . . | ctx)

    def emit(word: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        return emissions[g[sel], ectx[sel], :, word[sel]]     # (k, T)

    l_leaf, r_leaf = lsym < 0, rsym < 0
    values, where = [], []
    sel = ~l_leaf & ~r_leaf                                   # A -> B C, both nodes
    values.append(table[row[sel], lsym[sel], rsym[sel]])
    where.append(sel.nonzero(as_tuple=True)[0])
    sel = l_leaf & ~r_leaf                                    # A -> t C, t summed out
    scores = table[row[sel], NT:, rsym[sel]] + emit(lword, sel)
    values.append(torch.logsumexp(scores, dim=1))
    where.append(sel.nonzero(as_tuple=True)[0])
    sel = ~l_leaf & r_leaf                                    # A -> B t
    scores = table[row[sel], lsym[sel], NT:] + emit(rword, sel)
    values.append(torch.logsumexp(scores, dim=1))
    where.append(sel.nonzero(as_tuple=True)[0])
    sel = l_leaf & r_leaf                                     # A -> t t'
    scores = (table[:, NT:, NT:][row[sel]] + emit(lword, sel)[:, :, None]
              + emit(rword, sel)[:, None, :])
    values.append(torch.logsumexp(scores.flatten(1), dim=1))
    where.append(sel.nonzero(as_tuple=True)[0])
    per_node = torch.zeros(bi.shape[0], dtype=dtype, device=device).index_put(
        (torch.cat(where),), torch.cat(values))
    node_terms = node_terms.index_put((bi, mi), per_node)
    return node_terms, determined, root_term


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
