"""The compound PCFG of Kim, Dyer & Rush (2019), "Compound Probabilistic Context-Free
Grammars for Grammar Induction" (ACL), §3.

Each sentence draws a continuous z ~ N(0, I) (64-d) that modulates its own PCFG: z is
concatenated to the inputs of the root MLP, the linear rule scorer and the emission MLP of
the neural PCFG, so rules become sentence-specific (rules (B, NT, S, S)) while staying
context-free given z. The marginal over z is intractable; training maximizes the ELBO
    E_{q(z|x)}[ log p_θ(x | z) ] − KL(q(z|x) || N(0, I)),
the inner log p_θ(x | z) exact by the inside algorithm, with one reparameterized sample.
q(z|x) is a diagonal Gaussian from a BiLSTM over word embeddings, max-pooled over positions
then an affine map to (mean, log-variance), as in the paper.

Choice at evaluation (model.eval()): z = the posterior mean, as the paper parses. The ELBO is
then reported with its reconstruction term evaluated at the mean: deterministic, and a point
approximation of the expected term; pass `use_mean=False` (with a generator) for the unbiased
single-sample estimate of the true ELBO. Either way it is labelled a bound (`marginal =
"bound"`; `grammars.evaluation.likelihood` reads `elbo`). `log_joint`/`partial_log_joint` score trees
given z (default: posterior mean), i.e. log p_θ(x, tree | z).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gfnem_cli.engine import row_noise
from grammars.binary_trees import BinaryTrees
from grammars.models.forest_score import forest_log_prob, forest_node_terms, forest_structure
from grammars.models.generation import SamplingTables, sample
from grammars.models.layers import (ResidualMLP, init_parameters, masked_ids, private_rng,
                                     seeded_generator)
from grammars.charts.pcfg_params import PCFGParams
from grammars.charts.tree_score import tree_log_prob


class InferenceNetwork(nn.Module):
    """q(z | x) = N(mean, diag exp(logvar)) from a max-pooled BiLSTM (Kim et al. 2019, §3)."""

    def __init__(self, vocab_size: int, word_dim: int, lstm_dim: int, z_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim)
        self.lstm = nn.LSTM(word_dim, lstm_dim, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * lstm_dim, 2 * z_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embedding(masked_ids(ids, lengths))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                   total_length=ids.shape[1])
        valid = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        pooled = h.masked_fill(~valid[..., None], float("-inf")).max(dim=1).values
        mean, logvar = self.out(pooled).chunk(2, dim=-1)
        return mean, logvar


class CompoundPCFG(nn.Module):
    """A neural PCFG whose every distribution also reads a per-sentence z."""

    kind = "cpcfg"
    parent_conditioned = False
    compound = True              # per-sentence grammars: generation draws z from the prior
    marginal = "bound"           # log_marginal returns the ELBO

    def __init__(self, vocab_size: int, nonterminals: int = 30, preterminals: int = 60,
                 symbol_dim: int = 256, z_dim: int = 64, word_dim: int = 512,
                 lstm_dim: int = 512, seed: int | None = None):
        super().__init__()
        self.vocab_size, self.num_nonterminals, self.num_preterminals = (
            vocab_size, nonterminals, preterminals)
        self.num_symbols = S = nonterminals + preterminals
        self.symbol_dim, self.z_dim = D, Z = symbol_dim, z_dim
        with private_rng(seed):
            self.root_embedding = nn.Parameter(torch.empty(1, D))
            self.nonterminal_embedding = nn.Parameter(torch.empty(nonterminals, D))
            self.preterminal_embedding = nn.Parameter(torch.empty(preterminals, D))
            self.root_mlp = ResidualMLP(D + Z, D)
            self.root_out = nn.Linear(D, nonterminals)
            self.rule_out = nn.Linear(D + Z, S * S)
            self.term_mlp = ResidualMLP(D + Z, D)
            self.term_out = nn.Linear(D, vocab_size)
            self.encoder = InferenceNetwork(vocab_size, word_dim, lstm_dim, z_dim)
        init_parameters(self, seeded_generator(seed))

    # --- z -------------------------------------------------------------------------------
    def encode(self, ids: torch.Tensor, lengths: torch.Tensor):
        """(mean, logvar) of q(z | x), each (B, z_dim)."""
        return self.encoder(ids, lengths)

    def posterior_z(self, ids, lengths, use_mean: bool, generator=None):
        """(z, kl): z = mean or mean + σ·ε (reparameterized); kl = KL(q || N(0, I)) per row."""
        mean, logvar = self.encode(ids, lengths)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        if use_mean:
            return mean, kl
        rows = row_noise.for_rows(mean.shape[0], 1, mean.device)
        if rows is not None:
            eps = rows.normal(0, mean.shape[1]).to(mean.dtype)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device,
                              dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * eps, kl

    # --- the grammar given z ---------------------------------------------------------------
    def tables(self, z: torch.Tensor):
        """(roots (B, NT), rules (B, NT, S, S), emissions (B, T, V)) for each row of z (B, Z)."""
        B, NT, S, D = z.shape[0], self.num_nonterminals, self.num_symbols, self.symbol_dim

        def with_z(emb: torch.Tensor) -> torch.Tensor:        # (K, D) -> (B, K, D + Z)
            K = emb.shape[0]
            return torch.cat([emb[None].expand(B, K, D), z[:, None].expand(B, K, z.shape[1])], -1)

        roots = self.root_out(self.root_mlp(with_z(self.root_embedding))).log_softmax(-1)[:, 0]
        rules = self.rule_out(with_z(self.nonterminal_embedding)).log_softmax(-1)
        emissions = self.term_out(self.term_mlp(with_z(self.preterminal_embedding))).log_softmax(-1)
        return roots, rules.view(B, NT, S, S), emissions

    def params(self, ids: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor | None = None
               ) -> PCFGParams:
        """Per-sentence PCFGs given z (default: posterior mean); one (T, V) emission table each."""
        if z is None:
            z, _ = self.posterior_z(ids, lengths, use_mean=True)
        roots, rules, emissions = self.tables(z)
        words = masked_ids(ids, lengths)
        T = self.num_preterminals
        terms = emissions.gather(2, words[:, None, :].expand(-1, T, -1)).transpose(1, 2)
        return PCFGParams(roots=roots, rules=rules, terms=terms, lengths=lengths)

    def elbo(self, ids: torch.Tensor, lengths: torch.Tensor, inside,
             use_mean: bool | None = None, generator: torch.Generator | None = None):
        """(elbo (B,), kl (B,)): log p(x | z) by `inside.log_partition` minus KL.

        One reparameterized z in training mode; the posterior mean in eval mode (`use_mean`
        overrides). A lower bound on log p(x) (in expectation when z is sampled).
        """
        use_mean = (not self.training) if use_mean is None else use_mean
        z, kl = self.posterior_z(ids, lengths, use_mean, generator)
        return inside.log_partition(self.params(ids, lengths, z)) - kl, kl

    def log_marginal(self, ids: torch.Tensor, lengths: torch.Tensor, backend) -> torch.Tensor:
        """The ELBO (a bound, not log p(x)); see `elbo` for which z."""
        return self.elbo(ids, lengths, backend)[0]

    def log_joint(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
                  z: torch.Tensor | None = None) -> torch.Tensor:
        """log p_θ(x, tree | z), preterminals summed out; z defaults to the posterior mean."""
        return tree_log_prob(self.params(ids, lengths, z), trees)

    def partial_log_joint(self, ids: torch.Tensor, lengths: torch.Tensor,
                          partial_trees: BinaryTrees, z: torch.Tensor | None = None
                          ) -> torch.Tensor:
        """As the neural PCFG's (every present node counts; root prior once complete), given z."""
        return forest_log_prob(*self._forest_inputs(ids, lengths, partial_trees, z),
                               parent_conditioned=False)

    def node_terms(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
                   z: torch.Tensor | None = None):
        """(terms (B, M), determined (B, M), root_term (B,)) per node given z — `forest_score`."""
        return forest_node_terms(*self._forest_inputs(ids, lengths, trees, z),
                                 parent_conditioned=False)

    def _forest_inputs(self, ids, lengths, trees, z):
        if z is None:
            z, _ = self.posterior_z(ids, lengths, use_mean=True)
        roots, rules, emissions = self.tables(z)
        group = torch.arange(ids.shape[0], device=ids.device)     # sentence b uses grammar b
        return (forest_structure(trees), trees.labels, masked_ids(ids, lengths), roots,
                rules[:, None], emissions[:, None], group)

    # --- generation ----------------------------------------------------------------------
    def sampling_tables(self, count: int, generator: torch.Generator | None = None
                        ) -> SamplingTables:
        """`count` grammars (G = count), one per sentence, each from its own z ~ N(0, I)."""
        p = self.root_embedding
        where = generator.device if generator is not None else p.device
        z = torch.randn(count, self.z_dim, generator=generator, device=where, dtype=p.dtype)
        z = z.to(p.device)
        roots, rules, emissions = self.tables(z)
        S = self.num_symbols
        return SamplingTables(roots=roots, rules=rules.reshape(count, 1, -1, S * S),
                              emissions=emissions[:, None], parent_conditioned=False)

    def sample(self, num: int, max_length: int, generator: torch.Generator | None = None,
               noise=None):
        """Top-down samples (x, z_tree) with z from the prior; see `generation.sample`."""
        return sample(self, num, max_length, generator, noise=noise)
