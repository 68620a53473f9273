"""Reference backend: the same exact-marginal interface as `grammars.charts.inside`, computed by
torch-struct's `SentCFG` (Rush 2020), for cross-checks and for recipes with
`inside: torch-struct`. It needs the optional package torch-struct (a test extra).

Conventions are mapped onto ours: positions past a sentence are filled with 0 before the call
(torch-struct's chart runs over them), and a 1-word sentence, which its chart scores with the
fill value -1e5, gets -inf, like ours (the CNF grammar cannot generate it).
"""
from __future__ import annotations

import torch

from grammars.binary_trees import BinaryTrees
from grammars.charts.pcfg_params import check_lengths, masked_terms
from grammars.charts.pcfg_params import PCFGParams


def log_partition(params: PCFGParams) -> torch.Tensor:
    """log Σ_trees p(tree, words), (B,); -inf for 1-word sentences."""
    lengths = check_lengths(params)
    value = _dist(params, lengths).partition
    return torch.where(lengths >= 2, value, torch.full_like(value, float("-inf")))


def span_marginals(params: PCFGParams, labeled: bool = False) -> torch.Tensor:
    """(B, n, n+1) span posteriors ((B, n, n+1, NT) when labeled), laid out as ours."""
    lengths = check_lengths(params)
    B, n, NT = params.batch_size, params.max_length, params.num_nonterminals
    out = params.terms.new_zeros((B, n, n + 1, NT))
    if n >= 2:
        spans = _dist(params, lengths).marginals[-1].detach()     # [b, width - 2, start, A]
        for w in range(2, n + 1):
            p = torch.arange(n - w + 1, device=out.device)
            out[:, p, p + w] = spans[:, w - 2, : n - w + 1]
    if labeled:
        return out
    out = out.sum(-1)
    p = torch.arange(n, device=out.device)
    out[:, p, p + 1] = (p[None, :] < lengths[:, None]).to(out.dtype)
    return out


@torch.no_grad()
def viterbi(params: PCFGParams) -> tuple[torch.Tensor, BinaryTrees]:
    """(best joint log-prob (B,), best trees with labels and preterminals)."""
    lengths = check_lengths(params)
    B, n = params.batch_size, params.max_length
    terms = masked_terms(params, lengths)
    spans = torch.full((B, max(n - 1, 0), 2), -1, dtype=torch.long)
    labels = torch.full((B, max(n - 1, 0)), -1, dtype=torch.long)
    pre = torch.full((B, n), -1, dtype=torch.long)
    if n < 2:
        scores = terms.new_full((B,), float("-inf"))
        pre[:, 0] = terms[:, 0].argmax(-1).cpu()
        device = terms.device
        return scores, BinaryTrees(spans.to(device), labels.to(device), lengths, pre.to(device))
    with torch.enable_grad():
        dist = _dist(params, lengths)
        scores = dist.max.detach()
        term_part, _, _, span_part = (x.detach() for x in dist.argmax)
    scores = torch.where(lengths >= 2, scores, torch.full_like(scores, float("-inf")))
    count = [0] * B
    for b, w2, i, a in span_part.nonzero().tolist():
        if count[b] < lengths[b] - 1:
            spans[b, count[b]] = torch.tensor([i, i + w2 + 2])
            labels[b, count[b]] = a
            count[b] += 1
    best_pre = term_part.argmax(-1).cpu()
    live = torch.arange(n)[None, :] < lengths.cpu()[:, None]
    pre[live] = best_pre[live]
    single = lengths.cpu() == 1                  # no tree: the best emission, as ours
    pre[single, 0] = terms[single.to(terms.device), 0].argmax(-1).cpu()
    device = terms.device
    return scores, BinaryTrees(spans.to(device), labels.to(device), lengths, pre.to(device))


def _dist(params: PCFGParams, lengths: torch.Tensor):
    try:
        import torch_struct
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the torch-struct inside backend needs `pip install torch-struct`"
                          ) from err
    terms = masked_terms(params, lengths)
    rules, roots = params.rules, params.roots
    # torch-struct flips requires_grad on its inputs; never on the caller's tensors.
    if not rules.requires_grad:
        rules = rules.detach().clone()
    if not terms.requires_grad:
        terms = terms.detach().clone()
    if not roots.requires_grad:
        roots = roots.detach().clone()
    return torch_struct.SentCFG((terms, rules, roots), lengths=lengths)
