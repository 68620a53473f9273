"""The inside chart (`grammars.charts.inside`) against torch-struct's `SentCFG`, autograd, and in
float32 on long sentences; plus the reference backend's plumbing."""
from __future__ import annotations

import pytest
import torch

from grammars.charts import backends, inside
from grammars.charts import inside_torch_struct as ts
from grammars.charts.pcfg_params import PCFGParams

pytestmark = pytest.mark.filterwarnings("ignore:.*arg_constraints")
F64 = torch.float64


def random_params(lengths, NT=3, T=4, shared=False, dtype=F64, seed=0, rule_scale=1.0,
                  requires_grad=False) -> tuple[PCFGParams, tuple[torch.Tensor, ...]]:
    """A random CNF grammar (rules normalized over (B, C)); returns params and the leaves."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    B, n, S = len(lengths), int(lengths.max()), NT + T
    base = (torch.randn(1 if shared else B, NT, S * S, generator=g) * rule_scale).to(dtype)
    terms = torch.randn(B, n, T, generator=g).to(dtype)
    roots = torch.randn(B, NT, generator=g).to(dtype)
    leaves = tuple(x.requires_grad_(requires_grad) for x in (base, terms, roots))
    params = PCFGParams(roots=leaves[2].log_softmax(-1),
                        rules=leaves[0].log_softmax(-1).view(-1, NT, S, S).expand(B, NT, S, S),
                        terms=leaves[1].log_softmax(-1), lengths=lengths)
    return params, leaves


def rel_err(a, b):
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()


CASES = [  # (lengths, NT, T, shared)
    ([2], 2, 3, False),
    ([5, 5, 5], 3, 4, True),
    ([7, 2, 5, 3], 3, 4, False),
    ([6, 3, 4], 4, 2, True),
    ([9, 8, 2, 4, 6], 2, 5, False),
]


@pytest.mark.parametrize("lengths,NT,T,shared", CASES)
def test_partition_matches_torch_struct(lengths, NT, T, shared):
    params, _ = random_params(lengths, NT, T, shared, seed=len(lengths))
    ours, ref = inside.log_partition(params), ts.log_partition(params)
    assert rel_err(ours, ref.detach()) < 1e-5


@pytest.mark.parametrize("shared", [False, True])
def test_gradients_match_torch_struct(shared):
    params, leaves = random_params([7, 2, 5, 3], shared=shared, requires_grad=True, seed=3)
    ours = torch.autograd.grad(inside.log_partition(params).sum(), leaves)
    params, leaves = random_params([7, 2, 5, 3], shared=shared, requires_grad=True, seed=3)
    ref = torch.autograd.grad(ts.log_partition(params).sum(), leaves)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max().item() < 1e-9 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("lengths,NT,T,shared", CASES)
def test_span_marginals_match_torch_struct(lengths, NT, T, shared):
    params, _ = random_params(lengths, NT, T, shared, seed=7)
    for labeled in (False, True):
        ours = inside.span_marginals(params, labeled=labeled)
        ref = ts.span_marginals(params, labeled=labeled)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() < 1e-9


def test_span_marginals_are_a_tree_distribution():
    """Each sentence's width ≥ 2 marginals sum to its n - 1 internal nodes; labels refine them."""
    params, _ = random_params([6, 4, 2], seed=11)
    m = inside.span_marginals(params)
    lab = inside.span_marginals(params, labeled=True)
    n = params.max_length
    wide = torch.triu(torch.ones(n, n + 1, dtype=torch.bool), diagonal=2)
    assert torch.allclose((m * wide).sum((1, 2)), (params.lengths - 1).to(F64))
    assert torch.allclose(lab.sum(-1) * wide, m * wide)
    for b, L in enumerate(params.lengths.tolist()):
        assert m[b, 0, L].item() == pytest.approx(1.0)
        assert m[b, :, L + 1:].abs().sum().item() == 0.0


def test_gradcheck_with_span_potentials():
    """The hand-written outside pass is the exact derivative (finite differences, float64)."""
    NT, T, S, B = 2, 3, 5, 3
    lengths = torch.tensor([5, 3, 4])
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(B, 5, T, generator=g, dtype=F64, requires_grad=True),
            torch.randn(NT, S, S, generator=g, dtype=F64, requires_grad=True),
            torch.randn(B, NT, generator=g, dtype=F64, requires_grad=True),
            (torch.randn(B, 5, 6, NT, generator=g, dtype=F64) * 0.1).requires_grad_())

    def f(terms, rules, roots, phi):
        params = PCFGParams(roots, rules.expand(B, NT, S, S), terms, lengths)
        return inside._log_partition(params, phi)

    assert torch.autograd.gradcheck(f, args)


def test_one_word_sentences_score_zero_probability():
    params, leaves = random_params([1, 3, 1], requires_grad=True)
    z = inside.log_partition(params)
    assert z[0].item() == float("-inf") and z[2].item() == float("-inf")
    assert torch.isfinite(z[1])
    grads = torch.autograd.grad(z[1], leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    assert ts.log_partition(params)[0].item() == float("-inf")
    m = inside.span_marginals(params)
    assert m[0, 0, 1].item() == 1.0 and m[0].sum().item() == 1.0
    only, _ = random_params([1, 1])
    assert torch.isinf(inside.log_partition(only)).all()
    assert inside.span_marginals(only)[:, 0, 1].tolist() == [1.0, 1.0]


def test_shared_grammar_gradient_equals_per_sentence_copies():
    """An `expand`ed grammar (one GEMM per width) and B real copies give the same gradient."""
    params, (base, terms, roots) = random_params([6, 4, 5], shared=True, requires_grad=True)
    g_shared = torch.autograd.grad(inside.log_partition(params).sum(), base)[0]
    copies = params.rules.detach().clone().requires_grad_()
    per = PCFGParams(params.roots.detach(), copies, params.terms.detach(), params.lengths)
    g_copies = torch.autograd.grad(inside.log_partition(per).sum(), copies)[0]
    rules = base.log_softmax(-1)
    expected = torch.autograd.grad(rules, base, g_copies.sum(0).reshape(rules.shape))[0]
    assert torch.allclose(g_shared, expected, atol=1e-12)


def _float32_vs_float64(rule_logits, raw_terms, root_logits, lengths):
    """Partition and gradients in both precisions; every value and gradient must be finite."""
    B, NT = root_logits.shape
    S = int(rule_logits.shape[-1] ** 0.5)
    results = {}
    for dtype in (torch.float32, F64):
        leaves = [x.to(dtype).requires_grad_() for x in (rule_logits, raw_terms, root_logits)]
        params = PCFGParams(leaves[2].log_softmax(-1),
                            leaves[0].log_softmax(-1).view(NT, S, S).expand(B, NT, S, S),
                            leaves[1], lengths)
        z = inside.log_partition(params)
        grads = torch.autograd.grad(z.sum(), leaves)
        assert torch.isfinite(z).all()
        assert all(torch.isfinite(x).all() for x in grads)
        results[dtype] = (z.double(), [x.double() for x in grads])
    (z32, g32), (z64, g64) = results[torch.float32], results[F64]
    assert rel_err(z32, z64) < 1e-5
    for a, b in zip(g32, g64):
        assert ((a - b).norm() / b.norm()).item() < 1e-4
    return z64


def test_long_peaked_sentences_stay_finite_in_float32():
    """Length 60, each word emitted by one preterminal at log-prob -5..-60 and by the rest near
    -300: the partition and every gradient are finite in float32 and match float64."""
    NT, T, S = 10, 20, 30
    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([60, 57, 33])
    B, n = 3, 60
    raw = torch.full((B, n, T), -300.0, dtype=F64) + torch.randn(B, n, T, generator=g, dtype=F64)
    peak = -5 - 55 * torch.rand(B, n, 1, generator=g, dtype=F64)
    raw.scatter_(2, torch.randint(T, (B, n, 1), generator=g), peak)
    z = _float32_vs_float64(torch.randn(NT, S * S, generator=g, dtype=F64) * 3, raw,
                            torch.randn(B, NT, generator=g, dtype=F64), lengths)
    assert (z < -500).all()


def test_splits_hundreds_of_nats_apart_stay_finite_in_float32():
    """Rules with a leaf beside a nonterminal cost -150: a width-3 cell needs one, a width-4 cell
    need not, so at width 6 the split 2+4 outweighs 1+5 by ~150 nats. Only a common max over
    *all* splits keeps exp(shift) <= 1 (float32 overflows past e^88)."""
    NT, T, S = 3, 4, 7
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(NT, S, S, generator=g, dtype=F64)
    logits[:, :NT, NT:] -= 150
    logits[:, NT:, :NT] -= 150
    lengths = torch.tensor([12, 6, 9])
    terms = torch.randn(3, 12, T, generator=g, dtype=F64)
    roots = torch.randn(3, NT, generator=g, dtype=F64)
    z = _float32_vs_float64(logits.reshape(NT, S * S), terms.log_softmax(-1), roots, lengths)
    params = PCFGParams(roots.log_softmax(-1), logits.reshape(NT, S * S).log_softmax(-1)
                        .view(NT, S, S).expand(3, NT, S, S), terms.log_softmax(-1), lengths)
    assert rel_err(z, ts.log_partition(params).detach()) < 1e-5


def test_inside_chart_root_cells_give_the_partition():
    params, _ = random_params([6, 2, 4], seed=2)
    log_z, chart = inside.inside_chart(params)
    assert torch.allclose(log_z, inside.log_partition(params))
    rows = torch.arange(3)
    top = (chart[rows, 0, params.lengths] + params.roots).logsumexp(-1)
    assert torch.allclose(top, log_z)
    assert torch.isinf(chart[1, 0, 3:]).all()        # past the 2-word sentence


def test_get_backend():
    assert backends.get_backend("ours").log_partition is inside.log_partition
    assert backends.get_backend("torch-struct").viterbi is ts.viterbi
    with pytest.raises(ValueError, match="torch-struct"):
        backends.get_backend("fast")


def test_bad_lengths_are_refused():
    params, _ = random_params([3, 2])
    params.lengths = torch.tensor([4, 2])
    with pytest.raises(ValueError, match="lengths"):
        inside.log_partition(params)
