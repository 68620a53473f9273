"""The forest-scoring mixin of the grammars with one grammar shared by the whole batch
(N-PCFG, NCFG): log p_θ(x, z) of (partial) forests node by node (`forest_score`) and of a
bracketing with its labels summed out (`bracketing_score`), from the model's `tables()`.
"""
from __future__ import annotations

import torch

from grammars.binary_trees import BinaryTrees
from grammars.models.bracketing_score import bracketing_log_prob
from grammars.models.forest_score import forest_log_prob, forest_node_terms, forest_structure
from grammars.models.layers import masked_ids


class SharedGrammarForestScores:
    """Forest scores for a model with one grammar shared by the whole batch (N-PCFG, NCFG).

    The model supplies `tables()` -> (roots, rules, emissions) and `parent_conditioned`: the
    NCFG's rules and emissions carry a parent axis, the N-PCFG's gain one of size 1 here.
    `tables` may be passed in, computed once and reused (e.g. under no_grad, for the many
    partial states of one E-step batch); by default it is computed now.
    """

    parent_conditioned: bool

    def partial_log_joint(self, ids: torch.Tensor, lengths: torch.Tensor,
                          partial_trees: BinaryTrees, tables=None) -> torch.Tensor:
        """Σ of the terms a bottom-up partial forest already determines: (B,); on a complete
        tree, log p_θ(x, z) with preterminals summed out (see the module docstring)."""
        return forest_log_prob(*self._forest_inputs(ids, lengths, partial_trees, tables),
                               parent_conditioned=self.parent_conditioned)

    def node_terms(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
                   tables=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(terms (B, M), determined (B, M), root_term (B,)) per node, see `forest_node_terms`;
        exposed so a sampler can add the terms a merge determines incrementally."""
        return forest_node_terms(*self._forest_inputs(ids, lengths, trees, tables),
                                 parent_conditioned=self.parent_conditioned)

    def log_joint_bracketing(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
                             tables=None) -> torch.Tensor:
        """log p_θ(x, s) = log Σ_labels p_θ(x, z) over the labelings of each tree's bracketing s
        (labels ignored; `grammars.models.bracketing_score`): (B,)."""
        structure, _, words, roots, rules, emissions, _ = self._forest_inputs(
            ids, lengths, trees, tables)
        return bracketing_log_prob(structure, words, roots[0], rules[0], emissions[0],
                                   self.parent_conditioned)

    def _forest_inputs(self, ids, lengths, trees: BinaryTrees, tables=None):
        roots, rules, emissions = self.tables() if tables is None else tables
        if not self.parent_conditioned:
            rules, emissions = rules[None], emissions[None]
        group = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return (forest_structure(trees), trees.labels, masked_ids(ids, lengths), roots[None],
                rules[None], emissions[None], group)
