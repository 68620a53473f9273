"""A non-context-free grammar: every rule is conditioned on the parent of its left-hand side.

The grammar family of GFlowNet-EM for grammar induction (Hu, Malkin, Jain, Everett, Graves,
Bengio 2023, "GFlowNet-EM for learning compositional latent variable models", ICML): with
    p(root = A)                         (the root's parent is a special ROOT symbol)
    p(A -> B C | P)   P = the parent of A (ROOT for the root node)
    p(w | t, A)       A = the nonterminal that produced preterminal t
a tree's probability no longer factors over spans alone, so the inside algorithm does not
apply; only samplers over whole trees (GFlowNet-EM, MC-EM) can train it. Preterminals are
still summed out of log p(x, z) exactly, node by node (`forest_score`).

Neural parameterization in the style of the neural PCFG (Kim et al. 2019): a parent embedding
(NT + 1 of them, ROOT last) is concatenated with the symbol's embedding and passed through a
two-layer residual MLP, then a linear map scores all (NT + T)^2 right-hand sides (rules) or
all V words (emissions). The (NT+1, NT, S, S) rule table and the (NT, T, V) emission table
are computed once per call and gathered per node, never per position.
Interface: as the neural PCFG (see `npcfg`), without `params` (no PCFG exists) and with
`log_marginal` refused.
"""
from __future__ import annotations

import torch
from torch import nn

from grammars.binary_trees import BinaryTrees
from grammars.models.shared_scores import SharedGrammarForestScores
from grammars.models.generation import SamplingTables, sample
from grammars.models.layers import ResidualMLP, init_parameters, private_rng, seeded_generator


class NeuralNCFG(SharedGrammarForestScores, nn.Module):
    """Parent-conditioned neural grammar; rules and emissions see the parent's embedding."""

    kind = "ncfg"
    parent_conditioned = True
    compound = False
    marginal = None              # no tractable log p(x): use an importance-sampled bound

    def __init__(self, vocab_size: int, nonterminals: int = 30, preterminals: int = 60,
                 symbol_dim: int = 256, seed: int | None = None):
        super().__init__()
        self.vocab_size, self.num_nonterminals, self.num_preterminals = (
            vocab_size, nonterminals, preterminals)
        self.num_symbols = S = nonterminals + preterminals
        self.symbol_dim = D = symbol_dim
        with private_rng(seed):
            self.root_embedding = nn.Parameter(torch.empty(1, D))
            self.parent_embedding = nn.Parameter(torch.empty(nonterminals + 1, D))  # ROOT last
            self.nonterminal_embedding = nn.Parameter(torch.empty(nonterminals, D))
            self.preterminal_embedding = nn.Parameter(torch.empty(preterminals, D))
            self.root_mlp = ResidualMLP(D, D)
            self.root_out = nn.Linear(D, nonterminals)
            self.rule_mlp = ResidualMLP(2 * D, D)
            self.rule_out = nn.Linear(D, S * S)
            self.term_mlp = ResidualMLP(2 * D, D)
            self.term_out = nn.Linear(D, vocab_size)
        init_parameters(self, seeded_generator(seed))

    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(roots (NT,), rules (NT+1, NT, S, S), emissions (NT, T, V)), normalized, log space.

        rules[P, A, B, C] = log p(A -> B C | parent P), P = NT meaning ROOT;
        emissions[A, t, w] = log p(w | t, produced by A).
        """
        NT, T = self.num_nonterminals, self.num_preterminals
        S, D = self.num_symbols, self.symbol_dim
        roots = self.root_out(self.root_mlp(self.root_embedding)).log_softmax(-1)[0]
        pairs = torch.cat([self.parent_embedding[:, None].expand(NT + 1, NT, D),
                           self.nonterminal_embedding[None].expand(NT + 1, NT, D)], dim=-1)
        rules = self.rule_out(self.rule_mlp(pairs)).log_softmax(-1).view(NT + 1, NT, S, S)
        pairs = torch.cat([self.parent_embedding[:NT, None].expand(NT, T, D),
                           self.preterminal_embedding[None].expand(NT, T, D)], dim=-1)
        emissions = self.term_out(self.term_mlp(pairs)).log_softmax(-1)
        return roots, rules, emissions

    def log_joint(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
                  tables=None) -> torch.Tensor:
        """log p_θ(x, z) of complete trees, preterminals summed out, all nodes at once: (B,).

        A node's term (its rule under its parent's label, its leaf children's emissions) is
        determined once the node has a parent, or is the completed root; every term of a
        complete tree is."""
        return self.partial_log_joint(ids, lengths, trees, tables)

    def log_marginal(self, ids: torch.Tensor, lengths: torch.Tensor, backend=None):
        raise NotImplementedError(
            "the non-context-free grammar has no inside algorithm: estimate log p(x) by "
            "importance sampling with a tree sampler (DESIGN.md §6)")

    def sampling_tables(self, count: int, generator: torch.Generator | None = None
                        ) -> SamplingTables:
        roots, rules, emissions = self.tables()
        NT, S = self.num_nonterminals, self.num_symbols
        return SamplingTables(roots=roots[None], rules=rules.reshape(1, NT + 1, NT, S * S),
                              emissions=emissions[None], parent_conditioned=True)

    def sample(self, num: int, max_length: int, generator: torch.Generator | None = None,
               noise=None):
        """Top-down samples (x, z); see `grammars.models.generation.sample`."""
        return sample(self, num, max_length, generator, noise=noise)
