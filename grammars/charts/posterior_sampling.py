"""Exact samples from the posterior p(tree | words) of a CNF PCFG, drawn top-down.

The sampling semiring (Goodman 1999) read off the log inside chart: the root label is drawn
∝ p(root = A) β_A(0, n); then each node [i, j) labeled A draws its split k and child labels
(B, C) ∝ p(A -> B C) β_B(i, k) β_C(k, j) (a preterminal child's "β" is its emission), which
composes to exactly p(tree | words). The draw of (k, B) marginalizes C through a table
G(cell)[A, B] = log Σ_C p(A -> B C) β_C(cell) computed once per right-child cell by a GEMM, so
each node costs O(n·S) work however many samples are drawn; C is then drawn given (k, B).
All B × num_samples trees advance together (`build_trees`); the loop runs over steps only.
Preterminals are summed out of every reward, so the trees carry none.

With a training step's row noise (`train.row_noise`) the draws of each sample row come from
its uniforms, by inverse CDF, instead of from the generator: the root reads the row's column 0
and its c-th node (pre-order, which `build_trees` expands at step c) columns 1 + 2c (split and
left child) and 2 + 2c (right child). Columns past a node's widest split have weight 0, so a
sample is the same however wide its batch is padded and whichever sentences share it.
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import row_noise
from grammars.binary_trees import BinaryTrees
from grammars.charts.topdown import build_trees
from grammars.charts.inside import inside_chart
from grammars.charts.pcfg_params import batch_rows, masked_terms, shared_rules
from grammars.charts.pcfg_params import PCFGParams
from grammars.charts.semirings import sample_categorical, scaled_matmul

# Largest G table built at once (float64 elements, 256 MiB); bounds memory by chunking the batch.
TABLE_BUDGET = 1 << 25


@torch.no_grad()
def sample_posterior(params: PCFGParams, num_samples: int,
                     generator: torch.Generator | None = None,
                     noise: row_noise.RowNoise | None = None) -> BinaryTrees:
    """B · num_samples trees, the samples of sentence b in rows b·N ... b·N + N - 1; `noise`
    (row noise over those B·N rows) replaces the generator's draws.

    1-word sentences (probability 0 under the CNF grammar) get empty trees.
    """
    B, n, NT, T = params.batch_size, params.max_length, params.num_nonterminals, \
        params.num_preterminals
    per_sentence = max(1, n * (n + 1) // 2 * NT * (NT + T))
    chunk = max(1, TABLE_BUDGET // per_sentence)
    # draw 0's columns are the same whatever the width: column c is counter c
    u = None if noise is None else noise.uniform(0, max(2 * n - 1, 1))
    N = num_samples
    parts = [_sample_chunk(batch_rows(params, s, min(B, s + chunk)), N, generator,
                           None if u is None else u[s * N:min(B, s + chunk) * N])
             for s in range(0, B, chunk)]
    if len(parts) == 1:
        return parts[0]
    return BinaryTrees(spans=torch.cat([p.spans for p in parts]),
                       labels=torch.cat([p.labels for p in parts]),
                       lengths=torch.cat([p.lengths for p in parts]))


def _sample_chunk(params: PCFGParams, N: int, generator, u: torch.Tensor | None
                  ) -> BinaryTrees:
    _, chart = inside_chart(params)                                   # (B, n, n+1, NT) log β
    # The tables below multiply β by rule probabilities in the linear domain; float64 keeps
    # products of a cell's likely labels with rules that disfavour them from underflowing.
    chart = chart.double()
    lengths = params.lengths.to(chart.device).long()
    terms = masked_terms(params, lengths).double()
    B, n, T = terms.shape
    NT = params.num_nonterminals
    S = NT + T
    device, dtype = terms.device, terms.dtype
    shared = shared_rules(params.rules)
    R = (shared[None] if shared is not None else params.rules).double()  # (1 or B, NT, S, S)
    Bb = R.shape[0]

    # ext[b, i, j, s]: log β of symbol s over [i, j) (NT for width ≥ 2, emissions at width 1)
    ext = torch.full((B, n, n + 1, S), float("-inf"), dtype=dtype, device=device)
    ext[..., :NT] = chart
    pos = torch.arange(n, device=device)
    ext[:, pos, pos + 1, NT:] = terms
    # G[b, cell, A, s] = log Σ_C p(A -> s C) β_C(cell), for every possible right child, packed
    # into the rows of one table: the cells of width ≥ 2 of every sentence, then its leaves
    # (`row(b, i, j)`). Kept as G = log(Gp) + g_cell[row] + g_rule[kind, A, s]: logs are taken
    # only of what is read
    ii, jj = torch.triu_indices(n, n + 1, offset=2, device=device)
    mids = len(ii)
    cell = torch.zeros(n, n + 1, dtype=torch.long, device=device)
    cell[ii, jj] = torch.arange(mids, device=device)
    cell[pos, pos + 1] = B * mids + pos                   # leaves: after every sentence's mids
    stride = torch.zeros(n, n + 1, dtype=torch.long, device=device)
    stride[ii, jj] = mids
    stride[pos, pos + 1] = n

    def row(b, i, j):
        return cell[i, j] + b * stride[i, j]

    rule_by_c = R.permute(0, 3, 1, 2)                                  # [C, A, s]
    Gp = torch.empty(B * (mids + n), NT * S, dtype=dtype, device=device)
    g_mid, g_rule = _rule_tables(chart[:, ii, jj], rule_by_c[:, :NT], Gp[:B * mids])
    g_leaf, leaf_rule = _rule_tables(terms, rule_by_c[:, NT:], Gp[B * mids:])
    Gp = Gp.view(-1, NT, S)
    g_cell = torch.cat([g_mid.reshape(-1), g_leaf.reshape(-1)])
    g_rule = torch.stack([g_rule.view(Bb, NT, S), leaf_rule.view(Bb, NT, S)], 1)  # by child kind

    rows = torch.arange(B, device=device)
    root_logits = params.roots.double() + chart[rows, 0, lengths]              # -inf for length 1
    root_logits = torch.where(lengths[:, None] >= 2, root_logits, torch.zeros_like(root_logits))
    ks = torch.arange(1, n, device=device)
    step = [0]          # build_trees expands node `step` of every tree still growing

    def categorical(logits, r, column):
        if u is None:
            return sample_categorical(logits, generator)
        return row_noise.inverse_cdf(logits, u[r, column].to(device))

    root_labels = categorical(root_logits.repeat_interleave(N, 0),
                              torch.arange(B * N, device=device), 0)

    def choose(r, i, j, a):
        b = r // N
        widest = int((j - i).max())
        k = i[:, None] + ks[None, :widest - 1]                         # (rows, K) split points
        ok = k < j[:, None]
        kc = torch.where(ok, k, i[:, None] + 1)                        # clamp into a real cell
        left = ext[b[:, None], i[:, None], kc]                         # (rows, n-1, S)
        bb = (b % Bb)[:, None]
        right_is_leaf = (j[:, None] - kc == 1).long()
        right_row = row(b[:, None], kc, j[:, None])
        right = (torch.log(Gp[right_row, a[:, None]])                     # (rows, n-1, S)
                 + g_cell[right_row, None]
                 + g_rule[bb, right_is_leaf, a[:, None]])
        logits = torch.where(ok[..., None], left + right, torch.full_like(left, float("-inf")))
        c = step[0]
        step[0] += 1
        flat = categorical(logits.reshape(len(r), -1), r, 1 + 2 * c)
        k = i + 1 + flat // S
        left_sym = flat % S
        c_logits = R[b % Bb, a, left_sym] + ext[b, k, j]
        return k, left_sym, categorical(c_logits, r, 2 + 2 * c)

    trees = build_trees(lengths.repeat_interleave(N), root_labels, choose, n)
    trees.preterminals = None
    return trees


def _rule_tables(x: torch.Tensor, rule_by_c: torch.Tensor, out: torch.Tensor):
    """scaled_matmul of x (B, cells, C) with the rules (1 or B, C, NT, S) over the child C,
    written into out (B·cells, NT·S); returns (g_cell (B, cells), g_rule (1 or B, NT·S)). With
    one grammar for the batch it is a single GEMM over every cell of every sentence (a
    broadcast batched matmul in float64 ran ~3x slower, issue 17)."""
    B, cells, C = x.shape
    Bb = rule_by_c.shape[0]
    w = rule_by_c.reshape(Bb, C, -1)
    if Bb == 1:
        _, g_cell, g_rule = scaled_matmul(x.reshape(B * cells, C), w[0], out=out)
        return g_cell.view(B, cells), g_rule[None]
    _, g_cell, g_rule = scaled_matmul(x, w, out=out.view(B, cells, -1))
    return g_cell, g_rule
