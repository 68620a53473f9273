"""The inside pass's fast-path kernels (issue 17): row-vector matvecs, the transposed rule
GEMMs, the rank-1 outer product of width 4 (a broadcast product, not a GEMM), the width-2
gradient written without a zero fill. Each path is checked against exhaustive enumeration
(value and every gradient) and torch-struct, shared and per-sentence grammars."""
from __future__ import annotations

import itertools

import pytest
import torch

from grammars.charts import inside
from grammars.charts import inside_torch_struct as ts
from grammars.charts.pcfg_params import PCFGParams
from tree_enumeration import all_trees

pytestmark = pytest.mark.filterwarnings("ignore:.*arg_constraints")
F64 = torch.float64


def leaves(lengths, NT, T, shared, seed):
    g = torch.Generator().manual_seed(seed)
    B, n, S = len(lengths), max(lengths), NT + T
    base = torch.randn(1 if shared else B, NT, S * S, generator=g, dtype=F64)
    terms = torch.randn(B, n, T, generator=g, dtype=F64)
    roots = torch.randn(B, NT, generator=g, dtype=F64)
    return tuple(x.requires_grad_() for x in (base, terms, roots))


def params_of(base, terms, roots, lengths):
    B, n, T = terms.shape
    NT = roots.shape[1]
    S = NT + T
    return PCFGParams(roots.log_softmax(-1),
                      base.log_softmax(-1).view(-1, NT, S, S).expand(B, NT, S, S),
                      terms.log_softmax(-1), torch.as_tensor(lengths))


def enumerated_log_z(p: PCFGParams, b: int, L: int) -> torch.Tensor:
    """log Σ over every labeled tree and every preterminal of each word (differentiable)."""
    NT, T = p.num_nonterminals, p.num_preterminals
    scores = []
    for tree in all_trees(0, L, NT):
        label = {(i, j): a for i, j, a in tree}
        for tags in itertools.product(range(T), repeat=L):
            def sym(i, j):
                return label[(i, j)] if j - i > 1 else NT + tags[i]
            s = p.roots[b, label[(0, L)]] + sum(p.terms[b, i, t] for i, t in enumerate(tags))
            for i, j, a in tree:
                k = next(k for k in range(i + 1, j) if (k - i == 1 or (i, k) in label)
                         and (j - k == 1 or (k, j) in label))
                s = s + p.rules[b, a, sym(i, k), sym(k, j)]
            scores.append(s)
    return torch.stack(scores).logsumexp(0)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("lengths", [[4, 4], [5, 3, 4]])
def test_value_and_gradients_match_enumeration(lengths, shared):
    """Lengths 4 and 5 run the rank-1 (width 4) and rank-2 (width 5) NT·NT products."""
    NT, T = 2, 2
    xs = leaves(lengths, NT, T, shared, seed=sum(lengths))
    ours = inside.log_partition(params_of(*xs, lengths))
    g_ours = torch.autograd.grad(ours.sum(), xs)
    p = params_of(*xs, lengths)
    ref = torch.stack([enumerated_log_z(p, b, L) for b, L in enumerate(lengths)])
    g_ref = torch.autograd.grad(ref.sum(), xs)
    assert torch.allclose(ours, ref, rtol=1e-10, atol=0)
    for a, b in zip(g_ours, g_ref):
        assert (a - b).abs().max().item() < 1e-10


@pytest.mark.parametrize("shared", [True, False])
def test_gradients_match_torch_struct_at_every_width_path(shared):
    """Widths 2..9 (rank 1 to 6 NT·NT products), NT=4, T=3, float64."""
    lengths = [9, 4, 2, 7, 5]
    xs = leaves(lengths, 4, 3, shared, seed=1)
    g_ours = torch.autograd.grad(inside.log_partition(params_of(*xs, lengths)).sum(), xs)
    g_ref = torch.autograd.grad(ts.log_partition(params_of(*xs, lengths)).sum(), xs)
    for a, b in zip(g_ours, g_ref):
        assert (a - b).abs().max().item() < 1e-9 * max(1.0, b.abs().max().item())


def test_one_word_batch_has_an_exactly_zero_gradient():
    """n = 1: no width runs, so the width-2 gradient buffer must not be left uninitialized."""
    xs = leaves([1, 1, 1], 3, 4, True, seed=0)
    z = inside.log_partition(params_of(*xs, [1, 1, 1]))
    assert torch.isinf(z).all()
    grads = torch.autograd.grad(torch.where(torch.isinf(z), torch.zeros_like(z), z).sum()
                                + 0 * z[0].clamp_min(0), xs, allow_unused=True)
    for g in grads:
        assert g is None or (torch.isfinite(g).all() and (g == 0).all())
    # through the chart itself: the root cells' gradient reaches the inputs as zeros
    p = params_of(*xs, [1, 1, 1])
    lengths = p.lengths
    et, mt, P, rshift = inside._scaled_inputs(p, lengths)
    et, P = et.detach().requires_grad_(), P.detach().requires_grad_()
    e_top, _ = inside._ScaledInside.apply(et, mt, P, rshift, None, lengths, 3)
    g_et, g_P = torch.autograd.grad(e_top.sum(), (et, P))
    assert torch.isfinite(g_et).all() and torch.isfinite(g_P).all()
    assert (g_P == 0).all()
