"""What a grammar, and a trained run of one, can do: the one place these questions are asked.

- `has_dynamic_program(model)`: a context-free grammar (N-PCFG, C-PCFG) gives `params(ids,
  lengths)` for the charts, so it has the inside algorithm (an exact log p(x), or the ELBO for
  the compound PCFG), Viterbi and exact posterior samples. The non-context-free grammar has
  none: it is decoded, sampled and scored through a tree sampler or Markov chains.
- `has_sampler(run)`: the run holds a trained tree GFlowNet (method gfnem).
"""
from __future__ import annotations


def has_dynamic_program(model) -> bool:
    return hasattr(model, "params")


def has_sampler(run) -> bool:
    return getattr(run, "sampler", None) is not None
