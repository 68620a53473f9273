"""A plain log-space CKY for exact log p(x), independent of the fast inside algorithm.

The reference the true grammar's NLL is computed with (`data.true_grammar`), and an
independent check of `inside.log_partition` in the tests.
"""
from __future__ import annotations

import math

import torch

from grammars.charts.pcfg_params import PCFGParams


def cky_log_likelihood(params: PCFGParams, batch_chunk: int = 16) -> torch.Tensor:
    """(B,) exact log p(x) by a plain log-space CKY, independent of the fast inside algorithm.

    Charts are kept per span width; every width is one broadcast logsumexp over splits and
    child pairs. Memory is O(chunk * n * NT * S^2) per width, hence chunks of sentences sorted by length.
    Sentences of length 1 get -inf (CNF without unary rules cannot yield one word).
    """
    lengths = params.lengths.to(params.terms.device)
    result = params.roots.new_full((params.batch_size,), -math.inf)
    order = torch.argsort(lengths)              # chunks of similar lengths: trimmed charts
    for lo in range(0, params.batch_size, batch_chunk):
        idx = order[lo:lo + batch_chunk]
        n = max(int(lengths[idx].max()), 1)
        result[idx] = _cky(params.roots[idx], params.rules[idx], params.terms[idx, :n],
                           lengths[idx])
    return result


def _cky(roots, rules, terms, lengths):
    b, n, t = terms.shape
    nt = rules.shape[1]
    neg = torch.full((b, n, nt), -math.inf, dtype=terms.dtype, device=terms.device)
    chart = {1: torch.cat([neg, terms], dim=2)}                     # width -> (B, n-w+1, S)
    rules_flat = rules.reshape(b, 1, nt, -1)                        # (B, 1, NT, S*S)
    for w in range(2, n + 1):
        p = n - w + 1
        left = torch.stack([chart[k][:, :p] for k in range(1, w)], dim=2)          # (B,P,K,S)
        right = torch.stack([chart[w - k][:, k:k + p] for k in range(1, w)], dim=2)
        pairs = torch.logsumexp(left.unsqueeze(-1) + right.unsqueeze(-2), dim=2)  # (B,P,S,S)
        inside = torch.logsumexp(pairs.reshape(b, p, 1, -1) + rules_flat, dim=-1)  # (B,P,NT)
        chart[w] = torch.cat([inside, terms.new_full((b, p, t), -math.inf)], dim=2)
    result = []
    for i, length in enumerate(lengths.tolist()):
        top = chart[length][i, 0, :nt] + roots[i]
        result.append(torch.logsumexp(top, dim=0))
    return torch.stack(result)
