"""Sentence log-likelihoods and the corpus NLL / perplexity of DESIGN.md §6.

NLL per token counts one `</s>` per sentence (length + 1 tokens), as Kim et al. (2019) do,
so figures compare with the published ones; perplexity = exp(total NLL / total tokens).
Exact for PCFGs (inside algorithm); the compound PCFG gives the ELBO, an upper bound on NLL.
On a synthetic corpus, `true_grammar_likelihood` gives the true grammar's NLL on the same
sentences: the floor any learner can reach. `scored_batches` yields each sentence's log p(x),
which `corpus_likelihood` sums and `gfnem score` writes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from gfnem_cli.engine import distributed
from grammars.data.batching import in_order_batches
from grammars.data.true_grammar import TrueGrammar, true_log_likelihood


@dataclass
class CorpusLikelihood:
    total_nll: float
    total_tokens: int
    num_sentences: int
    is_bound: bool
    std_error: float | None = None   # of the per-token NLL, for sampled bounds

    @property
    def nll_per_token(self) -> float:
        return self.total_nll / max(self.total_tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nll_per_token, 700.0))


def sentence_log_likelihood(model, ids: torch.Tensor, lengths: torch.Tensor, inside
                            ) -> tuple[torch.Tensor, bool]:
    """log p(x) per sentence, or its ELBO for models with a continuous latent (then a bound)."""
    if hasattr(model, "elbo"):
        elbo, _ = model.elbo(ids, lengths, inside)
        return elbo, True
    return model.log_marginal(ids, lengths, inside), False


def tokens_in(lengths: torch.Tensor) -> int:
    return int((lengths + 1).sum())


def scored_batches(model, batches, inside, device, shard: bool = False):
    """Per batch, its sentences of two or more words scored (a CNF grammar cannot derive a
    1-word sentence): (rows of the batch's input list, log p(x) (B,), lengths, is_bound).
    The one pass behind the corpus figures and the per-sentence ones (`gfnem score`).

    With `shard` under torchrun each rank scores a contiguous block of batches and every rank
    gets them all, in order, on the CPU (`distributed.map_batches`; the figures are
    deterministic, so the one-process ones). Otherwise the pass stays lazy, a batch at a time."""
    def score(batch, _generator=None):
        keep = batch.lengths >= 2
        if not bool(keep.any()):
            return None
        ids, lengths = batch.ids[keep].to(device), batch.lengths[keep].to(device)
        with torch.no_grad():
            log_p, is_bound = sentence_log_likelihood(model, ids, lengths, inside)
        return batch.index[keep.cpu()].tolist(), log_p, lengths, is_bound

    def score_on_cpu(batch, generator):
        part = score(batch, generator)
        return None if part is None else (part[0], part[1].cpu(), part[2].cpu(), part[3])

    parts = (distributed.map_batches(batches, score_on_cpu, device=device)
             if shard and distributed.world().active else map(score, batches))
    yield from (part for part in parts if part is not None)


@torch.no_grad()
def corpus_likelihood(model, batches, inside, device, shard: bool = False) -> CorpusLikelihood:
    """The corpus NLL over `batches`; with `shard` (`gfnem evaluate`) under torchrun each rank
    scores a contiguous block of batches and the sums are gathered (the same figure)."""
    def figures(batch, _generator=None):
        total, tokens, count, bound = 0.0, 0, 0, False
        for rows, log_p, lengths, is_bound in scored_batches(model, [batch], inside, device):
            total, tokens = float(-log_p.double().sum()), tokens_in(lengths)
            count, bound = len(rows), is_bound
        return total, tokens, count, bound

    parts = (distributed.map_batches(batches, figures, device=device) if shard
             else map(figures, batches))
    total, tokens, count, bound = 0.0, 0, 0, False
    for part_total, part_tokens, part_count, part_bound in parts:
        total += part_total
        tokens += part_tokens
        count += part_count
        bound = bound or part_bound
    return CorpusLikelihood(total, tokens, count, bound)


def true_grammar_likelihood(corpus_path: Path, itos: list[str], ids: list[list[int]]) -> dict:
    """The true grammar's NLL per token on the same sentences (synthetic corpora only)."""
    path = Path(corpus_path) / "grammar.json"
    if not path.exists():
        return {}
    grammar = TrueGrammar.from_json(json.loads(path.read_text(encoding="utf-8")), itos)
    total, tokens = 0.0, 0
    for batch in in_order_batches([s for s in ids if len(s) >= 2], 64):
        total -= float(true_log_likelihood(grammar, batch.ids, batch.lengths).sum())
        tokens += tokens_in(batch.lengths)
    manifest = json.loads((Path(corpus_path) / "manifest.json").read_text(encoding="utf-8"))
    cap = manifest.get("synthetic", {}).get("max_length")
    out = {"true_nll_per_token": total / max(tokens, 1)}
    if cap:
        sentences = sum(1 for s in ids if len(s) >= 2)
        log_cap = grammar.log_prob_length_at_most(int(cap))
        out["true_nll_per_token_given_length_cap"] = (total + sentences * log_cap) / max(tokens, 1)
    return out
