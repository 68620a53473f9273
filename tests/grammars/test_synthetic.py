"""The embedded synthetic corpus: its grammar, sampler, scorer, PCFGParams and CKY likelihood."""
import itertools
import json
import math
import random
from collections import Counter

import pytest
import torch

from gfnem_cli.engine.errors import GfnemError
from grammars.charts.pcfg_params import PCFGParams
from grammars.charts.reference_cky import cky_log_likelihood
from grammars.data.synthetic import default_grammar, sample_treebank, true_grammar_json
from grammars.data.treebank import WORD_TAGS, tree_words_spans
from grammars.data.true_grammar import TrueGrammar, true_log_likelihood


# --- test-only oracles (moved here from the grammar module) --------------------------------

def tree_words(tree: str) -> list[str]:
    """The words (leaves) of a bracketed tree, in order, by the treebank's reader."""
    return tree_words_spans(tree)[0]


def expected_length(g: TrueGrammar) -> float:
    """Expected sentence length without a cap (inf if the grammar is not proper): the mean
    yield solves e = leaves + M e over the nonterminals' expected child counts M."""
    nt = g.num_nonterminals
    counts = g.rule_probs.sum(dim=2) + g.rule_probs.sum(dim=1)   # (NT, S)
    m = counts[:, :nt]
    leaves = counts[:, nt:].sum(dim=1)
    if torch.linalg.eigvals(m).abs().max().item() >= 1.0:
        return math.inf
    e = torch.linalg.solve(torch.eye(nt, dtype=torch.float64) - m, leaves)
    return (g.root_probs @ e).item()


# --- independent helpers: a tree reader and a scorer straight from the JSON dict ----------

def read_tree(text):
    """Nested (label, children) tuples; a leaf is (tag, word-string)."""
    tokens = text.replace("(", " ( ").replace(")", " ) ").split()
    pos = 0

    def node():
        nonlocal pos
        assert tokens[pos] == "("
        label = tokens[pos + 1]
        pos += 2
        if tokens[pos] not in ("(", ")"):
            word = tokens[pos]
            assert tokens[pos + 1] == ")"
            pos += 2
            return (label, word)
        children = []
        while tokens[pos] == "(":
            children.append(node())
        assert tokens[pos] == ")"
        pos += 1
        return (label, children)

    tree = node()
    assert pos == len(tokens)
    return tree


def json_log_prob(d, tree):
    rules = {(a, b, c): p for a, b, c, p in d["rules"]}
    emits = {(t, w): p for t, w, p in d["emissions"]}

    def score(node):
        label, rest = node
        if isinstance(rest, str):
            return math.log(emits[(label, rest)])
        left, right = rest
        return math.log(rules[(label, left[0], right[0])]) + score(left) + score(right)

    return math.log(d["roots"][tree[0]]) + score(tree)


def labels_of(tree):
    """All (label, path-of-ancestor-labels) pairs, to look for recursive structure."""
    out, stack = [], [(tree, ())]
    while stack:
        (label, rest), path = stack.pop()
        out.append((label, path))
        if not isinstance(rest, str):
            stack.extend((ch, path + (label,)) for ch in rest)
    return out


def logsumexp(xs):
    xs = [x for x in xs if x > -math.inf]
    if not xs:
        return -math.inf
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def brute_force(params, b):
    """log p(x) by enumerating every bracketing and every labeling, one tree at a time."""
    n = int(params.lengths[b])
    nt = params.num_nonterminals
    roots = params.roots[b].tolist()
    rules = params.rules[b].tolist()
    terms = params.terms[b, :n].tolist()

    def shapes(i, j):
        if j - i == 1:
            yield i
            return
        for k in range(i + 1, j):
            for left in shapes(i, k):
                for right in shapes(k, j):
                    yield (left, right)

    def internal(shape):
        return 0 if isinstance(shape, int) else 1 + internal(shape[0]) + internal(shape[1])

    tag_options = [[t for t in range(len(row)) if row[t] > -math.inf] for row in terms]
    totals = []
    for shape in shapes(0, n):
        for tags in itertools.product(*tag_options):
            for labels in itertools.product(range(nt), repeat=internal(shape)):
                it = iter(labels)

                def score(node):          # returns (symbol index, log-prob of the subtree)
                    if isinstance(node, int):
                        return nt + tags[node], terms[node][tags[node]]
                    a = next(it)
                    (lb, ls), (rb, rs) = score(node[0]), score(node[1])
                    return a, rules[a][lb][rb] + ls + rs

                if n == 1:
                    continue              # no unary rules: a 1-word sentence has no tree
                a, s = score(shape)
                totals.append(roots[a] + s)
    return logsumexp(totals)


def batch_ids(grammar, sentences):
    n = max(len(s) for s in sentences)
    ids = torch.zeros(len(sentences), n, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, :len(s)] = torch.tensor(grammar.encode(s))
    return ids, torch.tensor([len(s) for s in sentences])


# --- the corpus --------------------------------------------------------------------------

def test_deterministic_for_a_seed():
    a = sample_treebank(60, seed=7, max_length=20)
    assert a == sample_treebank(60, seed=7, max_length=20)
    assert a != sample_treebank(60, seed=8, max_length=20)
    assert len(a) == 60


def test_grammar_sizes_names_and_words():
    g = default_grammar()
    d = true_grammar_json()
    assert 8 <= g.num_nonterminals <= 30 and 15 <= g.num_preterminals <= 60  # fits NT=30, T=60
    assert len(set(g.words)) >= 150
    assert set(d["preterminals"]) <= WORD_TAGS
    assert not set(d["nonterminals"]) & WORD_TAGS
    for w in g.words:
        assert w == w.lower() and not any(ch.isdigit() or ch in "()[]{}" or ch.isspace() for ch in w)
    assert d["version"] == 1


def test_trees_are_binary_cnf_with_leaves_under_word_tags():
    d = true_grammar_json()
    nts, lexicon = set(d["nonterminals"]), {(t, w) for t, w, _ in d["emissions"]}
    trees = sample_treebank(300, seed=3, max_length=20)
    lengths = []
    for text in trees:
        tree = read_tree(text)
        assert tree[0] in d["roots"]
        words = []
        stack = [tree]
        while stack:
            label, rest = stack.pop()
            if isinstance(rest, str):
                assert label in WORD_TAGS and (label, rest) in lexicon
                words.append(rest)
            else:
                assert label in nts and len(rest) == 2
                stack.extend(reversed(rest))
        assert words == tree_words(text)
        lengths.append(len(words))
    assert min(lengths) >= 2 and max(lengths) <= 20
    assert 5 <= sum(lengths) / len(lengths) <= 11
    assert sum(4 <= n <= 20 for n in lengths) / len(lengths) > 0.75


def test_recursion_is_present():
    trees = [read_tree(t) for t in sample_treebank(500, seed=5, max_length=25)]
    pp_np_pp = rel = 0
    for tree in trees:
        labeled = labels_of(tree)
        pp_np_pp += any(label == "PP" and path[-2:] == ("PP", "NP") for label, path in labeled)
        rel += any(label == "SBAR-REL" for label, _ in labeled)
    assert pp_np_pp >= 5 and rel >= 5


def test_tree_log_prob_matches_the_json_grammar():
    g = default_grammar()
    d = json.loads(json.dumps(true_grammar_json()))
    for text, logp in g.sample(200, seed=11, max_length=20, with_log_probs=True):
        expected = json_log_prob(d, read_tree(text))
        assert logp == pytest.approx(expected, abs=1e-9)
        assert g.tree_log_prob(text) == pytest.approx(expected, abs=1e-9)
    assert g.tree_log_prob("(S (DT the) (NN dog))") == -math.inf   # no such rule


# --- exact likelihood --------------------------------------------------------------------

def test_cky_matches_brute_force_on_a_random_dense_grammar():
    gen = torch.Generator().manual_seed(0)
    b, nt, t, v, n = 5, 3, 2, 4, 4
    s = nt + t
    roots = torch.randn(nt, generator=gen, dtype=torch.float64).log_softmax(0).expand(b, -1)
    rules = torch.randn(nt, s * s, generator=gen, dtype=torch.float64).log_softmax(1)
    rules = rules.reshape(nt, s, s).expand(b, -1, -1, -1)
    table = torch.randn(t, v, generator=gen, dtype=torch.float64).log_softmax(1)
    ids = torch.randint(v, (b, n), generator=gen)
    lengths = torch.tensor([4, 1, 3, 2, 4])
    params = PCFGParams(roots, rules, table.t()[ids], lengths)
    got = cky_log_likelihood(params, batch_chunk=2)
    for i in range(b):
        assert got[i].item() == pytest.approx(brute_force(params, i), abs=1e-9)
    assert got[1].item() == -math.inf


def test_cky_matches_brute_force_on_the_true_grammar():
    g = default_grammar()
    trees = g.sample(4, seed=2, max_length=4, with_log_probs=True)
    sentences = [tree_words(t) for t, _ in trees]
    sentences += [["tom", "will", "see", "alice"], ["the", "dog", "saw", "that"]]
    ids, lengths = batch_ids(g, sentences)
    got = true_log_likelihood(g, ids, lengths)
    params = g.params(ids, lengths, dtype=torch.float64)
    for i in range(len(sentences)):
        assert got[i].item() == pytest.approx(brute_force(params, i), abs=1e-9)
    assert got[-2].item() > -math.inf and got[-1].item() == -math.inf   # ungrammatical
    for i, (_, logp) in enumerate(trees):
        assert logp <= got[i].item() + 1e-12       # one tree is part of the sentence's mass


def test_short_sentences_appear_at_their_exact_conditional_probability():
    g = default_grammar()
    cap, num = 3, 20000
    corpus = [" ".join(tree_words(t)) for t in g.sample(num, seed=0, max_length=cap)]
    log_z = g.log_prob_length_at_most(cap)
    counts = Counter(corpus)
    top = [s.split() for s, _ in counts.most_common(6)]
    ids, lengths = batch_ids(g, top)
    probs = (true_log_likelihood(g, ids, lengths) - log_z).exp().tolist()
    for words, p in zip(top, probs):
        freq = counts[" ".join(words)] / num
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / num) + 1e-4, (words, freq, p)
    # and the length distribution conditioned on the cap
    dist = g.length_distribution(cap) / math.exp(log_z)
    two = sum(len(s.split()) == 2 for s in corpus) / num
    assert abs(two - dist[2].item()) < 5 * math.sqrt(dist[2].item() / num)


def test_length_distribution_and_cap_probability():
    g = default_grammar()
    dist = g.length_distribution(200)
    assert dist[:2].sum().item() == 0.0
    assert g.log_prob_length_at_most(20) == pytest.approx(math.log(dist[:21].sum().item()))
    assert g.log_prob_length_at_most(10) < g.log_prob_length_at_most(20) < 0
    assert dist.sum().item() > 0.999                # proper: the mass sits on finite trees
    assert 5 < expected_length(g) < 15
    assert (dist[:201] * torch.arange(201)).sum().item() == pytest.approx(
        expected_length(g), rel=0.02)
    with pytest.raises(GfnemError):
        sample_treebank(5, seed=0, max_length=1)


# --- PCFGParams --------------------------------------------------------------------------

def test_params_are_normalized_with_the_right_shapes():
    g = default_grammar()
    sentences = [tree_words(t) for t in sample_treebank(3, seed=1, max_length=8)]
    ids, lengths = batch_ids(g, sentences)
    p = g.params(ids, lengths)
    b, n = ids.shape
    nt, t = g.num_nonterminals, g.num_preterminals
    assert p.roots.shape == (b, nt) and p.rules.shape == (b, nt, nt + t, nt + t)
    assert p.terms.shape == (b, n, t) and p.terms.dtype == torch.float32
    assert torch.allclose(p.roots.logsumexp(1), torch.zeros(b), atol=1e-5)
    assert torch.allclose(p.rules.logsumexp((2, 3)), torch.zeros(b, nt), atol=1e-5)
    table = g.emission_table()
    assert table.shape == (t, len(g.itos))
    assert torch.allclose(table.logsumexp(1), torch.zeros(t, dtype=torch.float64))
    assert torch.equal(p.terms[0, 0], table[:, ids[0, 0]].float())


def test_missing_words_fold_into_unk():
    g = default_grammar()
    d = true_grammar_json()
    dropped = {"dog", "cat", "saw"}
    itos = ["<unk>", "zebra"] + [w for w in g.words if w not in dropped]
    h = TrueGrammar.from_json(d, itos)
    table = h.emission_table()
    assert torch.allclose(table.logsumexp(1), torch.zeros(g.num_preterminals, dtype=torch.float64))
    nn, vbd = h.preterminals.index("NN"), h.preterminals.index("VBD")
    emit = {(tag, w): p for tag, w, p in d["emissions"]}
    assert table[nn, 0].exp().item() == pytest.approx(emit[("NN", "dog")] + emit[("NN", "cat")])
    assert table[vbd, 0].exp().item() == pytest.approx(emit[("VBD", "saw")])
    assert table[:, 1].eq(-math.inf).all()           # a word the grammar never emits
    # a sentence with a dropped word scores as its <unk> version
    ids = torch.tensor([h.encode(["the", "dog", "slept"])])
    full = true_log_likelihood(g, torch.tensor([g.encode(["the", "dog", "slept"])]),
                               torch.tensor([3]))
    assert ids[0, 1].item() == 0
    assert true_log_likelihood(h, ids, torch.tensor([3])).item() > full.item()


def test_json_round_trip_and_clear_errors():
    d = json.loads(json.dumps(true_grammar_json()))
    g = TrueGrammar.from_json(d)
    again = TrueGrammar.from_json(json.loads(json.dumps(g.to_json())))
    assert torch.allclose(again.rule_probs, g.rule_probs)
    assert torch.allclose(again.emission_probs, g.emission_probs)
    assert again.sample(20, 4, 20) == g.sample(20, 4, 20) == sample_treebank(20, 4, 20)

    bad = json.loads(json.dumps(d))
    bad["rules"][0][3] += 0.1
    with pytest.raises(GfnemError, match="sum to"):
        TrueGrammar.from_json(bad)
    bad = json.loads(json.dumps(d))
    bad["preterminals"][0] = "XX"
    with pytest.raises(GfnemError, match="PTB word tag"):
        TrueGrammar.from_json(bad)
    with pytest.raises(GfnemError, match="version"):
        TrueGrammar.from_json({**d, "version": 99})
    with pytest.raises(GfnemError, match="no <unk>"):
        TrueGrammar.from_json(d, ["dog"]).emission_table()
