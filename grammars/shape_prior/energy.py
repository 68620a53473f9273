"""E_ψ(s): the energy of an unlabelled binary tree shape, a small recursive network.

The "black-box prior on tree shape" of Hu et al. (ICML 2023), §5.2 ("CFG + EBM"): the
GFlowNet-EM reward becomes log R(x, z) = log p_θ(x, z) − E_ψ(shape(z)) / T. As in the
authors' code (a tree aggregator of width 16 over shapes with no labels), every leaf is one
learned vector h_leaf ∈ R^d, every internal node composes its children,
    h(v) = tanh(W₂ ELU(W₁ [h(left); h(right)] + b₁) + b₂),
and the energy is an MLP read-out of the root, E = w₂ᵀ ELU(W₃ [h(root); φ(n)] + b₃) + b₄, where
φ(n) = (log n, n / 20) when `length_conditioned` (ours; the authors read out h(root) alone, with
one more hidden layer). tanh bounds h, so a deep right-branching tree cannot blow up.

Batched, no loop over trees: the nodes of all trees are computed together, one step per span
width (a node's children are narrower than it), each step gathering children from the table
of node vectors (`forest_structure` gives the links). A 1-word tree has energy read-out(h_leaf).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from grammars.binary_trees import BinaryTrees
from grammars.models.forest_score import forest_structure
from grammars.models.layers import init_parameters, private_rng, seeded_generator


def length_features(lengths: torch.Tensor) -> torch.Tensor:
    n = lengths.clamp(min=1).float()
    return torch.stack([torch.log(n), n / 20.0], -1)


class ShapeEnergy(nn.Module):
    """`energy(trees) -> (B,)`; labels are ignored (present = label ≥ 0)."""

    def __init__(self, dim: int = 16, length_conditioned: bool = True, seed: int | None = None):
        super().__init__()
        self.dim, self.length_conditioned = dim, length_conditioned
        with private_rng(seed):
            self.leaf = nn.Parameter(torch.empty(dim))
            self.compose = nn.Sequential(nn.Linear(2 * dim, dim), nn.ELU(), nn.Linear(dim, dim),
                                         nn.Tanh())
            extra = 2 if length_conditioned else 0
            self.read_out = nn.Sequential(nn.Linear(dim + extra, 2 * dim), nn.ELU(),
                                          nn.Linear(2 * dim, 1))
        generator = seeded_generator(seed)
        init_parameters(self, generator)
        with torch.no_grad():            # the authors' leaf init: N(0, 1/d)
            self.leaf.copy_(torch.randn(dim, generator=generator) / math.sqrt(dim))

    def root_vectors(self, trees: BinaryTrees) -> torch.Tensor:
        """(B, d): h(root) of every tree, bottom-up one span width at a time."""
        b, m = trees.labels.shape
        leaf = self.leaf
        if m == 0:                                   # every tree has one word
            return leaf.expand(b, self.dim)
        s = forest_structure(trees, validate=False)
        table = leaf.expand(b, m, self.dim)
        width = torch.where(s.present, s.end - s.start, torch.zeros_like(s.start))
        for w in torch.unique(width[s.present]).tolist():
            bi, mi = (s.present & (width == w)).nonzero(as_tuple=True)
            left, right = s.left[bi, mi], s.right[bi, mi]
            h_left = torch.where((left >= 0)[:, None], table[bi, left.clamp(min=0)], leaf)
            h_right = torch.where((right >= 0)[:, None], table[bi, right.clamp(min=0)], leaf)
            table = table.index_put((bi, mi), self.compose(torch.cat([h_left, h_right], -1)))
        has_root = s.complete_root.any(1)
        root = s.complete_root.float().argmax(1)
        picked = table[torch.arange(b, device=root.device), root]
        return torch.where(has_root[:, None], picked, leaf)

    def forward(self, trees: BinaryTrees) -> torch.Tensor:
        h = self.root_vectors(trees)
        if self.length_conditioned:
            h = torch.cat([h, length_features(trees.lengths.to(h.device))], -1)
        return self.read_out(h).squeeze(-1)

    def energy_in_chunks(self, trees: BinaryTrees, chunk: int = 512) -> torch.Tensor:
        """(B,) without gradient, `chunk` trees at a time (a whole validation split)."""
        out = []
        with torch.no_grad():
            for k in range(0, len(trees), chunk):
                part = BinaryTrees(spans=trees.spans[k:k + chunk],
                                   labels=trees.labels[k:k + chunk],
                                   lengths=trees.lengths[k:k + chunk])
                out.append(self(part))
        return torch.cat(out) if out else torch.zeros(0)


def build_energy(section: dict, seed: int | None = None) -> ShapeEnergy:
    """The prior a recipe's `shape_ebm` section describes."""
    return ShapeEnergy(int(section["dim"]), bool(section["length_conditioned"]), seed=seed)
