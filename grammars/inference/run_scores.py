"""Score a trained run on sentences: its parses (for F1) and its likelihood, summed over a
split (`evaluate`) or sentence by sentence (`gfnem score`).

The trained-run scorer; the metrics it reports are `evaluation/` (free of any run).
Likelihood per DESIGN.md §6: exact NLL for PCFGs by the inside algorithm, the ELBO bound for
the compound PCFG, and for grammars without a dynamic program (or on request, `samples` > 0)
the importance-sampled bound of the run's GFlowNet sampler. `likelihood_estimators` makes
that choice once for both; both read the same passes (`scored_batches`,
`importance_sampled_batches`), so the per-sentence figures sum to the corpus ones exactly
(same sentences, batch size and seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gfnem_cli.engine import standard_error
from grammars.data.batching import in_order_batches
from grammars.evaluation.importance_bound import (importance_sampled_batches,
                                                  importance_sampled_likelihood)
from grammars.evaluation.likelihood import CorpusLikelihood, corpus_likelihood, scored_batches
from grammars.inference.parsing import parse_sentences
from grammars.models.capabilities import has_dynamic_program, has_sampler

DEFAULT_SAMPLES = 1000      # M of the importance-sampled bound when none is asked for


def likelihood_estimators(run, samples: int) -> tuple[bool, int]:
    """(exact: the grammar has a dynamic program (inside, or the compound PCFG's ELBO),
    M of the importance-sampled bound, 0 for none). The bound is taken on request
    (`samples` > 0) or where there is no exact figure, if the run has a sampler to draw
    with; a run with neither (MC-EM on the non-context-free grammar) has no likelihood."""
    exact = has_dynamic_program(run.model)
    if (samples > 0 or not exact) and has_sampler(run):
        return exact, samples or DEFAULT_SAMPLES
    return exact, 0


def run_likelihood(run, ids: list[list[int]], batch_size: int, samples: int, seed: int) -> dict:
    batches = in_order_batches(ids, batch_size)
    exact, m = likelihood_estimators(run, samples)
    out: dict = {}
    if exact:
        result = corpus_likelihood(run.model, batches, run.inside, run.device, shard=True)
        out.update(nll_per_token=result.nll_per_token, perplexity=result.perplexity,
                   nll_is_bound=result.is_bound, nll_method="inside" if not result.is_bound
                   else "elbo", nll_sentences=result.num_sentences,
                   nll_tokens=result.total_tokens)
    if m:
        bound = importance_sampled_likelihood(run, batches, m, seed, shard=True)
        fields = dict(nll_per_token=bound.nll_per_token, perplexity=bound.perplexity,
                      nll_is_bound=True, nll_method=f"importance sampling, M={m}",
                      nll_std_error=bound.std_error, nll_sentences=bound.num_sentences,
                      nll_tokens=bound.total_tokens)
        if out:  # keep the exact figure and add the bound beside it
            out.update({f"is_{k}": v for k, v in fields.items()})
        else:
            out.update(fields)
    return out


@dataclass
class SentenceLikelihood:
    """log p(x) of one sentence of two or more words (a bound where `is_bound`), with the
    importance-sampled bound beside the exact figure when both were asked for."""

    log_p: float
    tokens: int                       # length + 1 (one `</s>`), as the corpus NLL counts
    is_bound: bool
    method: str                       # inside | elbo | importance sampling, M=...
    variance: float | None = None     # Var[log p̂(x)] of an importance-sampled figure
    is_log_p: float | None = None     # the bound beside an exact figure
    is_variance: float | None = None
    is_method: str | None = None

    @property
    def std_error(self) -> float | None:
        return None if self.variance is None else math.sqrt(self.variance)

    @property
    def nll_per_token(self) -> float:
        return -self.log_p / self.tokens


def sentence_likelihoods(run, ids: list[list[int]], batch_size: int, samples: int,
                         seed: int, progress=None) -> list[SentenceLikelihood | None]:
    """One entry per sentence of `ids`, in order; None for sentences of fewer than two words
    (left out of the corpus NLL too) and when the run has no likelihood at all.
    `progress(k)` is told of every batch of each pass (two when both figures are asked).
    Under torchrun both passes share the batches over the ranks (as `run_likelihood` does)
    and every rank gets every figure."""
    batches = in_order_batches(ids, batch_size)
    exact, m = likelihood_estimators(run, samples)
    out: list[SentenceLikelihood | None] = [None] * len(ids)
    tell = progress or (lambda _: None)
    if exact:
        for rows, log_p, lengths, bound in scored_batches(run.model, batches, run.inside,
                                                          run.device, shard=True):
            for row, value, n in zip(rows, log_p.double().tolist(), lengths.tolist()):
                out[row] = SentenceLikelihood(value, n + 1, bound, "elbo" if bound else "inside")
            tell(len(rows))
    if m:
        method = f"importance sampling, M={m}"
        for rows, log_p, var, lengths in importance_sampled_batches(run, batches, m, seed,
                                                                      shard=True):
            tell(len(rows))
            for row, value, v, n in zip(rows, log_p.tolist(), var.tolist(), lengths.tolist()):
                if out[row] is None:
                    out[row] = SentenceLikelihood(value, n + 1, True, method, v)
                else:
                    out[row].is_log_p, out[row].is_variance = value, v
                    out[row].is_method = method
    return out


def summed_likelihood(sentences: list[SentenceLikelihood | None]) -> dict:
    """The corpus figures of per-sentence ones, under `run_likelihood`'s keys."""
    scored = [s for s in sentences if s is not None]
    if not scored:
        return {}
    tokens = sum(s.tokens for s in scored)

    def figures(log_p: list[float], variances: list[float] | None, bound: bool,
                method: str) -> dict:
        total = CorpusLikelihood(-sum(log_p), tokens, len(scored), bound)
        out = dict(nll_per_token=total.nll_per_token, perplexity=total.perplexity,
                   nll_is_bound=bound, nll_method=method, nll_sentences=len(scored),
                   nll_tokens=tokens)
        if variances is not None:
            out["nll_std_error"] = standard_error(sum(variances), tokens)
        return out

    first = scored[0]
    variances = [s.variance for s in scored] if first.variance is not None else None
    out = figures([s.log_p for s in scored], variances, first.is_bound, first.method)
    if first.is_method is not None:
        both = figures([s.is_log_p for s in scored], [s.is_variance for s in scored], True,
                       first.is_method)
        out.update({f"is_{k}": v for k, v in both.items()})
    return out


@torch.no_grad()
def run_predictions(run, ids: list[list[int]], decode: str, batch_size: int, samples: int,
                    progress=None, seed: int = 0) -> list[list[tuple[int, int]]]:
    trees = parse_sentences(run, ids, decode, batch_size, samples, progress, seed)
    return [t.span_lists()[0] for t in trees]
