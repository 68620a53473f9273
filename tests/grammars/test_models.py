"""Neural and compound PCFGs, the model factory and top-down generation.

The references are slow per-tree recursions and brute-force sums over every labeled tree of
sentences of length <= 4 (2 nonterminals, 3 preterminals, 3 words), sharing no code with
`forest_score`, `tree_score` or the inside algorithm.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
import torch

from gfnem_cli.engine.errors import GfnemError
from grammars.binary_trees import BinaryTrees
from grammars.models import CompoundPCFG, NeuralNCFG, NeuralPCFG, build_grammar
from grammars.charts.pcfg_params import PCFGParams

NT, T, V = 2, 3, 3
F64 = torch.float64


def sharpen(model, seed: int = 1):
    """Random output biases so the tiny grammar is far from uniform (catches index mix-ups)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in (model.root_out, model.rule_out, model.term_out):
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen, dtype=lin.bias.dtype))
    return model


@pytest.fixture(scope="module")
def npcfg():
    return sharpen(build_grammar("npcfg", V, seed=0, nonterminals=NT, preterminals=T,
                                 symbol_dim=8).double())


@pytest.fixture(scope="module")
def cpcfg():
    return sharpen(build_grammar("cpcfg", V, seed=0, nonterminals=NT, preterminals=T,
                                 symbol_dim=8, z_dim=4, word_dim=8, lstm_dim=8).double())


# ------------------------------------------------------------------ trees and references
def shapes(i: int, j: int):
    if j - i == 1:
        return [i]
    return [(i, j, left, right) for k in range(i + 1, j)
            for left in shapes(i, k) for right in shapes(k, j)]


def internal_spans(shape) -> list[tuple[int, int]]:
    if isinstance(shape, int):
        return []
    i, j, left, right = shape
    return [(i, j)] + internal_spans(left) + internal_spans(right)


def all_trees(n: int):
    return [[(i, j, a) for (i, j), a in zip(internal_spans(s), labels)]
            for s in shapes(0, n) for labels in itertools.product(range(NT), repeat=n - 1)]


def batch(trees, lengths) -> BinaryTrees:
    M = max(max(lengths) - 1, 1)
    spans = torch.full((len(trees), M, 2), -1, dtype=torch.long)
    labels = torch.full((len(trees), M), -1, dtype=torch.long)
    for b, nodes in enumerate(trees):
        for m, (i, j, a) in enumerate(nodes):
            spans[b, m] = torch.tensor([i, j])
            labels[b, m] = a
    return BinaryTrees(spans, labels, torch.tensor(lengths))


def id_batch(sentences, pad: int = 0) -> torch.Tensor:
    n = max(len(s) for s in sentences)
    return torch.tensor([list(s) + [pad] * (n - len(s)) for s in sentences])


def random_tree(n: int, rng: random.Random):
    roots, nodes = [(i, i + 1) for i in range(n)], []
    while len(roots) > 1:
        p = rng.randrange(len(roots) - 1)
        (i, _), (_, j) = roots[p], roots[p + 1]
        nodes.append((i, j, rng.randrange(NT)))
        roots[p:p + 2] = [(i, j)]
    return nodes


def slow_subtree(grammar, words, label, i, j) -> float:
    """log p(words[i:j], subtree | root label) by recursion; grammar = (roots, rules, emis)."""
    _, rules, emis = grammar
    A = label[(i, j)]
    inner = [e for (s, e) in label if s == i and e < j]
    k = max(inner) if inner else i + 1

    def options(s, e):
        if e - s == 1:
            return [(NT + t, float(emis[t, words[s]])) for t in range(T)]
        return [(label[(s, e)], slow_subtree(grammar, words, label, s, e))]

    total = [float(rules[A, b, c]) + lw + rw for b, lw in options(i, k) for c, rw in options(k, j)]
    return float(torch.logsumexp(torch.tensor(total, dtype=F64), 0))


def slow_log_joint(grammar, words, nodes) -> float:
    label = {(i, j): a for i, j, a in nodes}
    n = len(words)
    return float(grammar[0][label[(0, n)]]) + slow_subtree(grammar, words, label, 0, n)


def brute_log_partition(grammar, words) -> float:
    scores = [slow_log_joint(grammar, words, t) for t in all_trees(len(words))]
    return float(torch.logsumexp(torch.tensor(scores, dtype=F64), 0))


def npcfg_grammar(model):
    with torch.no_grad():
        return model.tables()


class BruteInside:
    """An inside backend by enumeration (reads PCFGParams rows; tiny sentences only)."""

    @staticmethod
    def log_partition(params: PCFGParams) -> torch.Tensor:
        out = []
        for b in range(params.batch_size):
            n = int(params.lengths[b])
            # per-position emissions: fold the words into a (T, n) "vocabulary" of positions
            grammar = (params.roots[b], params.rules[b], params.terms[b, :n].t())
            out.append(brute_log_partition(grammar, list(range(n))))
        return torch.tensor(out, dtype=params.terms.dtype)


# ------------------------------------------------------------------ factory
def test_factory_builds_each_kind_with_defaults():
    for kind, cls in (("npcfg", NeuralPCFG), ("cpcfg", CompoundPCFG), ("ncfg", NeuralNCFG)):
        m = build_grammar(kind, 50, seed=0, z_dim=64)               # z_dim ignored where unused
        assert isinstance(m, cls) and m.kind == kind
        assert (m.num_nonterminals, m.num_preterminals, m.symbol_dim) == (30, 60, 256)
    assert build_grammar("cpcfg", 50, seed=0).z_dim == 64
    with pytest.raises(GfnemError, match="unknown grammar kind"):
        build_grammar("pcfg", 50)
    with pytest.raises(GfnemError, match="nonterminalz"):
        build_grammar("npcfg", 50, nonterminalz=3)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_grammar("ncfg", 7, seed=5, nonterminals=3, preterminals=4, symbol_dim=8)
    assert torch.equal(before, torch.random.get_rng_state())
    b = build_grammar("ncfg", 7, seed=5, nonterminals=3, preterminals=4, symbol_dim=8)
    c = build_grammar("ncfg", 7, seed=6, nonterminals=3, preterminals=4, symbol_dim=8)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


# ------------------------------------------------------------------ neural PCFG
def test_npcfg_params_are_normalized_and_emissions_gathered_once(npcfg):
    ids = torch.tensor([[0, 2, 1, 1], [2, 0, 7, 7]])                 # 7: padding, past length
    lengths = torch.tensor([4, 2])
    p = npcfg.params(ids, lengths)
    emis = npcfg.tables()[2]
    one = torch.ones((), dtype=F64)
    torch.testing.assert_close(p.roots.exp().sum(-1), one.expand(2))
    torch.testing.assert_close(p.rules.exp().sum((-2, -1)), one.expand(2, NT))
    torch.testing.assert_close(emis.exp().sum(-1), one.expand(T))
    assert p.rules.shape == (2, NT, NT + T, NT + T) and p.rules.stride(0) == 0  # shared, no copy
    assert p.terms.shape == (2, 4, T)
    for b in range(2):
        for i in range(int(lengths[b])):
            torch.testing.assert_close(p.terms[b, i], emis[:, ids[b, i]])


def test_npcfg_scores_match_slow_reference(npcfg):
    """partial_log_joint on complete trees (own scorer) and log_joint (tree_score) = reference."""
    rng = random.Random(0)
    sents = [[rng.randrange(V) for _ in range(rng.randint(2, 7))] for _ in range(30)]
    trees = [random_tree(len(s), rng) for s in sents]
    for t in trees:
        rng.shuffle(t)
    lengths = [len(s) for s in sents]
    grammar = npcfg_grammar(npcfg)
    want = torch.tensor([slow_log_joint(grammar, s, t) for s, t in zip(sents, trees)], dtype=F64)
    args = (id_batch(sents, pad=-1), torch.tensor(lengths), batch(trees, lengths))
    with torch.no_grad():
        torch.testing.assert_close(npcfg.partial_log_joint(*args), want, rtol=0, atol=1e-9)
        pytest.importorskip("grammars.charts.tree_score")
        torch.testing.assert_close(npcfg.log_joint(*args), want, rtol=0, atol=1e-9)


def test_npcfg_partial_forest_counts_every_node_but_no_root_prior(npcfg):
    """A bottom-up partial forest scores Σ over its subtrees (their own rules included: a
    context-free rule does not wait for the parent); the root prior only once complete."""
    grammar = npcfg_grammar(npcfg)
    words = [0, 2, 1, 1, 0]
    forests = [[], [(1, 3, 0)], [(1, 3, 0), (3, 5, 1)], [(1, 3, 0), (0, 3, 1)],
               [(1, 3, 0), (3, 5, 1), (0, 3, 1), (0, 5, 0)]]
    want = []
    for nodes in forests:
        label = {(i, j): a for i, j, a in nodes}
        tops = [(i, j) for i, j, _ in nodes
                if not any(s <= i and j <= e and (s, e) != (i, j) for s, e, _ in nodes)]
        w = sum(slow_subtree(grammar, words, label, i, j) for i, j in tops)
        want.append(w + (float(grammar[0][label[(0, 5)]]) if (0, 5) in label else 0.0))
    args = (id_batch([words] * len(forests)), torch.tensor([5] * len(forests)),
            batch(forests, [5] * len(forests)))
    with torch.no_grad():
        got = npcfg.partial_log_joint(*args)
        terms, determined, root_term = npcfg.node_terms(*args)
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=0, atol=1e-9)
    assert torch.equal(determined, args[2].labels >= 0)
    torch.testing.assert_close((terms * determined).sum(1) + root_term, got)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_npcfg_log_marginal_is_log_sum_over_trees(npcfg, n):
    inside = pytest.importorskip("grammars.charts.inside")
    rng = random.Random(n)
    sents = [[rng.randrange(V) for _ in range(n)] for _ in range(3)]
    trees = all_trees(n)
    ids = id_batch([s for s in sents for _ in trees])
    lengths = torch.tensor([n] * len(ids))
    with torch.no_grad():
        scores = npcfg.partial_log_joint(ids, lengths, batch(trees * len(sents), lengths.tolist()))
        marginal = npcfg.log_marginal(id_batch(sents), torch.tensor([n] * 3), inside)
    torch.testing.assert_close(marginal, scores.view(3, -1).logsumexp(1), rtol=0, atol=1e-9)
    grammar = npcfg_grammar(npcfg)
    torch.testing.assert_close(marginal, torch.tensor([brute_log_partition(grammar, s)
                                                       for s in sents], dtype=F64))


def test_npcfg_samples_follow_the_marginal(npcfg):
    """Sentence frequencies match p(x) / P(|x| <= L) (brute force; loose statistical bound)."""
    L, N = 4, 20000
    with torch.no_grad():
        ids, trees, pre = npcfg.sample(N, L, torch.Generator().manual_seed(0))
        assert torch.isfinite(npcfg.partial_log_joint(id_batch(ids), trees.lengths, trees)).all()
    grammar = npcfg_grammar(npcfg)
    counts = Counter(tuple(s) for s in ids)
    # P(|x| = n): words summed out, i.e. every emission log-prob 0
    blank = (grammar[0], grammar[1], torch.zeros(T, 1, dtype=F64))
    norm = sum(float(torch.tensor(brute_log_partition(blank, [0] * n)).exp())
               for n in range(2, L + 1))
    assert int(trees.lengths.max()) <= L and ((pre >= 0).sum(1) == trees.lengths).all()
    for n in (2, 3):
        for words in itertools.product(range(V), repeat=n):
            p = float(torch.tensor(brute_log_partition(grammar, list(words))).exp()) / norm
            freq = counts[words] / N
            assert abs(freq - p) < 5 * (p * (1 - p) / N) ** 0.5 + 1e-3, (words, freq, p)


# ------------------------------------------------------------------ compound PCFG
def test_cpcfg_params_are_per_sentence_and_normalized(cpcfg):
    ids, lengths = torch.tensor([[0, 2, 1], [2, 2, 0]]), torch.tensor([3, 2])
    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    p = cpcfg.params(ids, lengths, z)
    one = torch.ones((), dtype=F64)
    torch.testing.assert_close(p.roots.exp().sum(-1), one.expand(2))
    torch.testing.assert_close(p.rules.exp().sum((-2, -1)), one.expand(2, NT))
    assert (p.rules[0] - p.rules[1]).abs().max() > 1e-3                # z changes the grammar
    _, _, emis = cpcfg.tables(z)
    torch.testing.assert_close(emis.exp().sum(-1), one.expand(2, T))
    torch.testing.assert_close(p.terms[1, 1], emis[1, :, 2])


def test_cpcfg_elbo_and_kl(cpcfg):
    ids, lengths = torch.tensor([[0, 2, 1, 1], [2, 2, 0, 0]]), torch.tensor([4, 3])
    cpcfg.eval()
    with torch.no_grad():
        elbo, kl = cpcfg.elbo(ids, lengths, BruteInside)
        mean, logvar = cpcfg.encode(ids, lengths)
        q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
        prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
        torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, prior).sum(-1))
        # eval: posterior mean, deterministic
        log_px_z = BruteInside.log_partition(cpcfg.params(ids, lengths, mean))
        torch.testing.assert_close(elbo, log_px_z - kl)
        torch.testing.assert_close(cpcfg.log_marginal(ids, lengths, BruteInside), elbo)
    assert cpcfg.marginal == "bound"
    # training: one reparameterized sample, reproducible, gradients reach encoder and grammar
    cpcfg.train()
    inside = pytest.importorskip("grammars.charts.inside")
    a, _ = cpcfg.elbo(ids, lengths, inside, generator=torch.Generator().manual_seed(1))
    b, _ = cpcfg.elbo(ids, lengths, inside, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, elbo)
    cpcfg.zero_grad()
    a.sum().backward()
    assert cpcfg.encoder.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert cpcfg.rule_out.weight.grad.abs().sum() > 0
    cpcfg.zero_grad()
    cpcfg.eval()


def test_cpcfg_tree_scores_given_z(cpcfg):
    rng = random.Random(2)
    sents = [[rng.randrange(V) for _ in range(rng.randint(2, 6))] for _ in range(6)]
    trees = [random_tree(len(s), rng) for s in sents]
    lengths = [len(s) for s in sents]
    ids = id_batch(sents)
    z = torch.randn(len(sents), 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        roots, rules, emis = cpcfg.tables(z)
        want = torch.tensor([slow_log_joint((roots[b], rules[b], emis[b]), s, t)
                             for b, (s, t) in enumerate(zip(sents, trees))], dtype=F64)
        args = (ids, torch.tensor(lengths), batch(trees, lengths))
        torch.testing.assert_close(cpcfg.partial_log_joint(*args, z=z), want, rtol=0, atol=1e-9)
        pytest.importorskip("grammars.charts.tree_score")
        torch.testing.assert_close(cpcfg.log_joint(*args, z=z), want, rtol=0, atol=1e-9)


def test_cpcfg_samples_are_valid_and_reproducible(cpcfg):
    with torch.no_grad():
        a = cpcfg.sample(150, 6, torch.Generator().manual_seed(4))     # > one round of 64
        b = cpcfg.sample(150, 6, torch.Generator().manual_seed(4))
    assert a[0] == b[0] and torch.equal(a[1].spans, b[1].spans) and torch.equal(a[2], b[2])
    ids, trees, _ = a
    assert len(ids) == 150 and int(trees.lengths.max()) <= 6
    assert [len(s) for s in ids] == trees.lengths.tolist()
    assert ((trees.labels >= 0).sum(1) == trees.lengths - 1).all()
    with torch.no_grad():   # valid trees: the scorer's structure check passes, score finite
        assert torch.isfinite(cpcfg.partial_log_joint(id_batch(ids), trees.lengths, trees)).all()


# ------------------------------------------------------------------ generation edge cases
def test_generation_rejects_impossible_requests(npcfg):
    with pytest.raises(GfnemError, match="max_length"):
        npcfg.sample(3, 1)
    deep = build_grammar("npcfg", V, seed=0, nonterminals=NT, preterminals=T, symbol_dim=8)
    with torch.no_grad():                       # A -> B C with both children nonterminal, always
        bias = torch.full((NT + T, NT + T), -1e4)
        bias[:NT, :NT] = 0.0
        deep.rule_out.weight.zero_()
        deep.rule_out.bias.copy_(bias.flatten())
    from grammars.models.generation import sample
    with pytest.raises(GfnemError, match="at most 5 words"):
        sample(deep, 2, 5, torch.Generator().manual_seed(0), max_draws=50)
