"""Grammar models: neural PCFG, compound PCFG, non-context-free grammar (DESIGN.md §5).

All three share one interface, so a trainer can treat them alike (ids (B, n) long, any
padding past lengths (B,); trees a `BinaryTrees`; log-probabilities throughout):
  model.log_joint(ids, lengths, trees)          -> (B,) log p_θ(x, z), preterminals summed out
  model.partial_log_joint(ids, lengths, trees)  -> (B,) terms a bottom-up partial forest fixes
  model.node_terms(ids, lengths, trees)         -> per-node terms, determined mask, root term
  model.log_marginal(ids, lengths, backend)     -> (B,) exact (npcfg), ELBO (cpcfg), refused (ncfg)
  model.sample(num, max_length, generator)      -> (ids lists, BinaryTrees, preterminals)
  model.sampling_tables(count, generator)       -> what `generation.sample` reads
and class attributes `kind`, `parent_conditioned` (ncfg), `compound` (cpcfg) and
`marginal` ("exact" | "bound" | None). The context-free models add `params(ids, lengths)`
-> PCFGParams for the inside algorithm; the compound PCFG adds `elbo`.

    npcfg.py, cpcfg.py, ncfg.py  the three grammars; layers.py their residual MLPs
    forest_score.py     log p(x, z) of (partial) forests node by node (ForestStructure)
    bracketing_score.py log p(x, s) of a bracketing, labels summed out by a DP over the tree
    shared_scores.py    the scoring mixin of the grammars with one shared grammar
    generation.py       top-down ancestral sampling of (x, z) from any grammar
    capabilities.py     has_dynamic_program(model), has_sampler(run): asked only there
"""
from __future__ import annotations

from gfnem_cli.engine.errors import GfnemError
from grammars.models.cpcfg import CompoundPCFG
from grammars.models.ncfg import NeuralNCFG
from grammars.models.npcfg import NeuralPCFG

KINDS = {"npcfg": NeuralPCFG, "cpcfg": CompoundPCFG, "ncfg": NeuralNCFG}
# sizes each kind reads; keys of another kind's list (e.g. a recipe's z_dim) are ignored
SIZES = {
    "npcfg": ("nonterminals", "preterminals", "symbol_dim"),
    "cpcfg": ("nonterminals", "preterminals", "symbol_dim", "z_dim", "word_dim", "lstm_dim"),
    "ncfg": ("nonterminals", "preterminals", "symbol_dim"),
}
ALL_SIZES = {key for keys in SIZES.values() for key in keys}


def build_grammar(kind: str, vocab_size: int, seed: int | None = None, **sizes):
    """A grammar model of `kind` ("npcfg", "cpcfg", "ncfg") over `vocab_size` words.

    `sizes`: nonterminals (30), preterminals (60), symbol_dim (256); cpcfg also z_dim (64),
    word_dim (512), lstm_dim (512). A size another kind uses is ignored, so a recipe's
    `model` section can be passed whole; an unknown key is an error. `seed` makes the
    initialization depend on nothing else (the global RNG is not touched).
    """
    if kind not in KINDS:
        raise GfnemError(f"unknown grammar kind '{kind}'",
                         hint="choose one of " + ", ".join(KINDS))
    unknown = sorted(set(sizes) - ALL_SIZES)
    if unknown:
        raise GfnemError(f"unknown grammar size '{unknown[0]}'",
                         hint="valid: " + ", ".join(sorted(ALL_SIZES)))
    used = {k: int(v) for k, v in sizes.items() if k in SIZES[kind]}
    for key, value in used.items():
        if value < 1:
            raise GfnemError(f"grammar size {key} must be at least 1, got {value}")
    return KINDS[kind](vocab_size, seed=seed, **used)


__all__ = ["build_grammar", "NeuralPCFG", "CompoundPCFG", "NeuralNCFG", "KINDS"]
