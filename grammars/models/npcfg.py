"""The neural PCFG of Kim, Dyer & Rush (2019), "Compound Probabilistic Context-Free Grammars
for Grammar Induction" (ACL), §2.2.

One grammar shared by every sentence, its rule probabilities produced by a network over
symbol embeddings rather than stored as free parameters (the paper found this smoother
parameterization crucial for induction):
  p(root = A)     = softmax_A( u_A^T f_root(w_root) )          residual MLP, two layers
  p(A -> B C)     = softmax_{BC}( u_{BC}^T w_A + b_{BC} )        linear over (NT + T)^2
  p(w | t)        = softmax_w( u_w^T f_term(w_t) )               residual MLP, two layers
Symbols: NT nonterminals then T preterminals (S = NT + T), as `PCFGParams` reads them.

The interface shared by the three grammar models (npcfg, cpcfg, ncfg):
  params(ids, lengths)                  -> PCFGParams          (context-free models only)
  log_joint(ids, lengths, trees)        -> (B,) log p(x, z), preterminals summed out
  partial_log_joint(ids, lengths, trees)-> (B,) determined terms of a partial forest
  node_terms(ids, lengths, trees)       -> per-node terms, determined mask, root term
  log_marginal(ids, lengths, backend)   -> (B,) log p(x) by the inside algorithm
  sampling_tables(count, generator)     -> SamplingTables      (top-down generation)
  sample(num, max_length, generator)    -> (ids lists, BinaryTrees, preterminals)
`ids` (B, n) long, any padding value past `lengths` (B,). `backend` is an inside module
exposing `log_partition(params)` (ours, `grammars.charts.inside`, or a torch-struct wrapper).
"""
from __future__ import annotations

import torch
from torch import nn

from grammars.binary_trees import BinaryTrees
from grammars.models.shared_scores import SharedGrammarForestScores
from grammars.models.generation import SamplingTables, sample
from grammars.models.layers import (ResidualMLP, init_parameters, masked_ids, private_rng,
                                     seeded_generator)
from grammars.charts.pcfg_params import PCFGParams
from grammars.charts.tree_score import tree_log_prob


class NeuralPCFG(SharedGrammarForestScores, nn.Module):
    """A shared neural PCFG; `params` broadcasts one grammar over the batch without copies."""

    kind = "npcfg"
    parent_conditioned = False   # rules depend only on their left-hand side
    compound = False             # no per-sentence continuous latent
    marginal = "exact"           # log_marginal is exact

    def __init__(self, vocab_size: int, nonterminals: int = 30, preterminals: int = 60,
                 symbol_dim: int = 256, seed: int | None = None):
        super().__init__()
        self.vocab_size, self.num_nonterminals, self.num_preterminals = (
            vocab_size, nonterminals, preterminals)
        self.num_symbols = S = nonterminals + preterminals
        self.symbol_dim = symbol_dim
        with private_rng(seed):
            self.root_embedding = nn.Parameter(torch.empty(1, symbol_dim))
            self.nonterminal_embedding = nn.Parameter(torch.empty(nonterminals, symbol_dim))
            self.preterminal_embedding = nn.Parameter(torch.empty(preterminals, symbol_dim))
            self.root_mlp = ResidualMLP(symbol_dim, symbol_dim)
            self.root_out = nn.Linear(symbol_dim, nonterminals)
            self.rule_out = nn.Linear(symbol_dim, S * S)
            self.term_mlp = ResidualMLP(symbol_dim, symbol_dim)
            self.term_out = nn.Linear(symbol_dim, vocab_size)
        init_parameters(self, seeded_generator(seed))

    # --- the grammar as log-probability tables -------------------------------------------
    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(roots (NT,), rules (NT, S, S), emissions (T, V)): each normalized, log space."""
        NT, S = self.num_nonterminals, self.num_symbols
        roots = self.root_out(self.root_mlp(self.root_embedding)).log_softmax(-1)[0]
        rules = self.rule_out(self.nonterminal_embedding).log_softmax(-1).view(NT, S, S)
        emissions = self.term_out(self.term_mlp(self.preterminal_embedding)).log_softmax(-1)
        return roots, rules, emissions

    def params(self, ids: torch.Tensor, lengths: torch.Tensor) -> PCFGParams:
        """The grammar for a batch: emissions computed once as a (T, V) table, then gathered."""
        roots, rules, emissions = self.tables()
        B = ids.shape[0]
        terms = emissions.t()[masked_ids(ids, lengths)]           # (B, n, T)
        return PCFGParams(roots=roots.expand(B, -1), rules=rules.expand(B, -1, -1, -1),
                          terms=terms, lengths=lengths)

    # --- scores of latent trees -----------------------------------------------------------
    def log_joint(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees
                  ) -> torch.Tensor:
        """log p_θ(x, z) per sentence, preterminals summed out (`grammars.charts.tree_score`)."""
        return tree_log_prob(self.params(ids, lengths), trees)

    def log_marginal(self, ids: torch.Tensor, lengths: torch.Tensor, backend) -> torch.Tensor:
        """log p_θ(x) = log Σ_z p_θ(x, z): the inside algorithm of `backend` (exact)."""
        return backend.log_partition(self.params(ids, lengths))

    # --- generation ----------------------------------------------------------------------
    def sampling_tables(self, count: int, generator: torch.Generator | None = None
                        ) -> SamplingTables:
        """One shared grammar (G = 1) whatever `count`: generation reuses it every round."""
        roots, rules, emissions = self.tables()
        S = self.num_symbols
        return SamplingTables(roots=roots[None], rules=rules.reshape(1, 1, -1, S * S),
                              emissions=emissions[None, None], parent_conditioned=False)

    def sample(self, num: int, max_length: int, generator: torch.Generator | None = None,
               noise=None):
        """Top-down samples (x, z); see `grammars.models.generation.sample`."""
        return sample(self, num, max_length, generator, noise=noise)
