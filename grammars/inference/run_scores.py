"""Score a trained run on a corpus split: its parses (for F1) and its likelihood.

The trained-run scorer; the metrics it reports are `evaluation/` (free of any run).
Likelihood per DESIGN.md §6: exact NLL for PCFGs by the inside algorithm, the ELBO bound for
the compound PCFG, and for grammars without a dynamic program (or on request, `samples` > 0)
the importance-sampled bound of the run's GFlowNet sampler.
"""
from __future__ import annotations

import torch

from grammars.data.batching import in_order_batches
from grammars.evaluation.importance_bound import importance_sampled_likelihood
from grammars.evaluation.likelihood import corpus_likelihood
from grammars.inference.parsing import parse_sentences
from grammars.models.capabilities import has_dynamic_program, has_sampler


def run_likelihood(run, ids: list[list[int]], batch_size: int, samples: int, seed: int) -> dict:
    batches = in_order_batches(ids, batch_size)
    out: dict = {}
    if has_dynamic_program(run.model):
        result = corpus_likelihood(run.model, batches, run.inside, run.device)
        out.update(nll_per_token=result.nll_per_token, perplexity=result.perplexity,
                   nll_is_bound=result.is_bound, nll_method="inside" if not result.is_bound
                   else "elbo", nll_sentences=result.num_sentences,
                   nll_tokens=result.total_tokens)
    if samples > 0 or not out:
        if not has_sampler(run):
            # no exact likelihood and no sampler to importance-sample with (e.g. MC-EM on the
            # non-context-free grammar): report F1 alone rather than a meaningless bound
            return out
        m = samples or 1000
        bound = importance_sampled_likelihood(run, batches, m, seed)
        fields = dict(nll_per_token=bound.nll_per_token, perplexity=bound.perplexity,
                      nll_is_bound=True, nll_method=f"importance sampling, M={m}",
                      nll_std_error=bound.std_error, nll_sentences=bound.num_sentences,
                      nll_tokens=bound.total_tokens)
        if out:  # keep the exact figure and add the bound beside it
            out.update({f"is_{k}": v for k, v in fields.items()})
        else:
            out.update(fields)
    return out


@torch.no_grad()
def run_predictions(run, ids: list[list[int]], decode: str, batch_size: int, samples: int,
                    progress=None) -> list[list[tuple[int, int]]]:
    trees = parse_sentences(run, ids, decode, batch_size, samples, progress)
    return [t.span_lists()[0] for t in trees]
