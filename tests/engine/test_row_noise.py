"""`train.row_noise` (engine/row_noise.py): counter-based draws keyed by (seed, step, call, row).

What data parallelism relies on: a shard's noise is the slice of the whole batch's, a row's
action does not depend on how wide its batch is padded, and the draws are uniform (and the
inverse-CDF actions distributed as the policy says); the grammar's exact posterior samples and
dreams are functions of their global rows. The two-rank runs that train what one process does
are in test_data_parallel.py and test_data_parallel_row_noise.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfnem_cli.engine import row_noise
from gfnem_cli.engine.behaviour import NEG, choose

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)


@pytest.fixture
def on():
    row_noise.configure(True, seed=7)
    yield
    row_noise.configure(False, seed=0)


@given(st.lists(INT64, min_size=1, max_size=32))
def test_the_tensor_finalizer_is_splitmix64s(values):
    got = row_noise.mix(torch.tensor(values, dtype=torch.int64)).tolist()
    assert [g & ((1 << 64) - 1) for g in got] == [row_noise.mix_int(v) for v in values]


def test_splitmix64_reference_values():
    # SplitMix64 from state 0: its first output is the finalizer of 0x9E3779B97F4A7C15
    assert row_noise.mix_int(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    assert row_noise.mix_int(2 * 0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


@given(first=st.integers(0, 50), count=st.integers(1, 20), draw=st.integers(0, 100))
@settings(max_examples=30)
def test_a_shard_sees_the_slice_of_the_whole_batch(first, count, draw):
    whole = row_noise.RowNoise(12345, 0, first + count, torch.device("cpu"))
    part = row_noise.RowNoise(12345, first, count, torch.device("cpu"))
    assert torch.equal(part.uniform(draw), whole.uniform(draw)[first:])
    assert torch.equal(part.uniform(draw, 5), whole.uniform(draw, 5)[first:])


def test_uniforms_are_uniform_and_independent_across_rows_draws_and_keys():
    noise = row_noise.RowNoise(99, 0, 20000, torch.device("cpu"))
    u = noise.uniform(3, 4)
    assert u.dtype == torch.float64 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    flat = u.flatten()
    # Kolmogorov–Smirnov distance of 80,000 draws: 1.63/sqrt(n) is the 1% critical value
    ks = (flat.sort().values - torch.arange(1, flat.numel() + 1) / flat.numel()).abs().max()
    assert float(ks) < 1.63 / math.sqrt(flat.numel())
    columns = torch.stack([u[:, 0], u[:, 1], noise.uniform(4), noise.child(1).uniform(3),
                           row_noise.RowNoise(100, 0, 20000, torch.device("cpu")).uniform(3)])
    corr = torch.corrcoef(columns)
    off = corr[~torch.eye(5, dtype=torch.bool)]
    assert float(off.abs().max()) < 0.04               # 5.6 sd of a null correlation
    normal = noise.normal(0, 4)
    assert abs(float(normal.mean())) < 0.02 and abs(float(normal.var()) - 1.0) < 0.03


def test_inverse_cdf_actions_follow_the_policy():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    n = 40000
    u = row_noise.RowNoise(5, 0, n, torch.device("cpu")).uniform(0)
    actions = row_noise.inverse_cdf(probs.log().expand(n, -1), u)
    counts = torch.bincount(actions, minlength=4).double()
    expected = probs.double() * n
    assert counts[1] == 0                                    # weight 0: never chosen
    chi2 = float((((counts - expected) ** 2)[expected > 0] / expected[expected > 0]).sum())
    assert chi2 < 11.3                                       # 1% critical value, 2 dof


@given(logits=st.lists(st.floats(-20, 20), min_size=1, max_size=8),
       legal=st.lists(st.booleans(), min_size=8, max_size=8), pad=st.integers(0, 6),
       u=st.floats(0.0, 1.0, exclude_max=True))
def test_the_action_ignores_padding_and_is_always_legal(logits, legal, pad, u):
    legal = legal[:len(logits)]
    legal[0] = legal[0] or not any(legal)                    # at least one legal action
    x = torch.tensor(logits).unsqueeze(0)
    mask = torch.tensor(legal).unsqueeze(0)
    wide = torch.cat([x, torch.zeros(1, pad)], 1)
    wide_mask = torch.cat([mask, torch.zeros(1, pad, dtype=torch.bool)], 1)
    uu = torch.tensor([u], dtype=torch.float64)
    narrow_action = choose(x, mask, uniforms=uu)[0]
    wide_action = choose(wide, wide_mask, uniforms=uu)[0]
    assert torch.equal(narrow_action, wide_action)
    assert bool(mask[0, narrow_action[0]])


def test_edge_uniforms_pick_the_first_and_last_legal_actions():
    logits = torch.tensor([[0.0, 1.0, 2.0, NEG]])
    assert int(row_noise.inverse_cdf(logits, torch.tensor([0.0]))[0]) == 0
    last = torch.tensor([1.0 - 2.0 ** -53], dtype=torch.float64)
    assert int(row_noise.inverse_cdf(logits, last)[0]) == 2


def test_noise_is_active_only_inside_a_training_step_with_the_option_on(on):
    assert row_noise.for_rows(4, 1, "cpu") is None
    with row_noise.training_step(3, first_input=2):
        a, b = row_noise.for_rows(4, 2, "cpu"), row_noise.for_rows(4, 2, "cpu")
        assert a.first_row == 4 and a.num_rows == 4
        assert not torch.equal(a.uniform(0), b.uniform(0))   # each call its own numbers
    with row_noise.training_step(3, first_input=2):
        again = row_noise.for_rows(4, 2, "cpu")
    assert torch.equal(again.uniform(0), a.uniform(0))       # a function of (step, call)
    with row_noise.training_step(4):
        assert not torch.equal(row_noise.for_rows(4, 2, "cpu").uniform(0), a.uniform(0))
    assert row_noise.for_rows(4, 1, "cpu") is None
    row_noise.configure(False, seed=7)
    with row_noise.training_step(3):
        assert row_noise.for_rows(4, 1, "cpu") is None


def test_the_tree_sampler_draws_the_same_trees_for_a_row_in_any_shard(on):
    from grammars.gflownet.sampler import TreeSampler

    torch.manual_seed(0)
    sampler = TreeSampler(vocab_size=20, num_nonterminals=3, d_model=16, num_layers=1,
                          num_heads=2)
    lengths = torch.tensor([3, 7, 2, 5])
    ids = torch.randint(1, 20, (4, 7))
    with row_noise.training_step(0):
        whole = sampler.sample(ids, lengths, 2).z
    with row_noise.training_step(0, first_input=2):       # rank 1 of 2: inputs 2 and 3,
        part = sampler.sample(ids[2:, :5], lengths[2:], 2).z   # padded to its own longest
    assert torch.equal(part.spans, whole.spans[4:, :4])
    assert torch.equal(part.labels, whole.labels[4:, :4])


# ---- the grammar's exact posterior draws and the sleep phase's dreams (issue 14)
def _grammar(kind: str = "npcfg", nonterminals: int = 4, preterminals: int = 5):
    from grammars.models import build_grammar

    return build_grammar(kind, 30, seed=0, nonterminals=nonterminals,
                         preterminals=preterminals, symbol_dim=16)


def test_an_exact_posterior_sample_ignores_padding_and_batch_mates(monkeypatch):
    """Sentence b's samples read rows b·N ... of its noise: alone, trimmed to its own length,
    in a wider batch with other sentences, or in a batch split into chunks, it draws the same
    trees."""
    from grammars.charts import posterior_sampling
    from grammars.charts.posterior_sampling import sample_posterior

    model, N, cpu = _grammar(), 3, torch.device("cpu")
    lengths = torch.tensor([9, 5, 2, 7, 4])
    ids = torch.randint(30, (5, 12), generator=torch.Generator().manual_seed(1))
    whole = sample_posterior(model.params(ids, lengths), N, noise=row_noise.RowNoise(
        41, 0, 5 * N, cpu))
    narrow = sample_posterior(model.params(ids[:, :9], lengths), N, noise=row_noise.RowNoise(
        41, 0, 5 * N, cpu))
    assert torch.equal(whole.spans[:, :8], narrow.spans) and not bool((whole.labels[:, 8:]
                                                                         >= 0).any())
    monkeypatch.setattr(posterior_sampling, "TABLE_BUDGET", 1)     # one sentence a chunk
    chunked = sample_posterior(model.params(ids, lengths), N, noise=row_noise.RowNoise(
        41, 0, 5 * N, cpu))
    assert torch.equal(chunked.spans, whole.spans) and torch.equal(chunked.labels, whole.labels)
    for b, n in enumerate(lengths.tolist()):
        alone = sample_posterior(model.params(ids[b:b + 1, :n], lengths[b:b + 1]), N,
                                 noise=row_noise.RowNoise(41, b * N, N, cpu))
        rows = slice(b * N, (b + 1) * N)
        assert torch.equal(alone.spans, whole.spans[rows, :n - 1])
        assert torch.equal(alone.labels, whole.labels[rows, :n - 1])


def test_keyed_exact_posterior_draws_follow_the_posterior():
    """Every labeled tree of a 3-word sentence (2 shapes x 2 x 2 labels), drawn 20,000 times
    with row noise, against p(z | x) from log p(x, z)."""
    from grammars.binary_trees import BinaryTrees
    from grammars.charts.posterior_sampling import sample_posterior

    model, n = _grammar(nonterminals=2, preterminals=2), 20000
    ids, lengths = torch.tensor([[3, 8, 5]]), torch.tensor([3])
    trees = [(inner, a, b) for inner in ((0, 2), (1, 3)) for a in range(2) for b in range(2)]
    spans = torch.tensor([[[0, 3], list(inner)] for inner, _, _ in trees])
    labels = torch.tensor([[a, b] for _, a, b in trees])
    with torch.no_grad():
        log_p = model.log_joint(ids.expand(8, -1), lengths.expand(8),
                                BinaryTrees(spans=spans, labels=labels, lengths=lengths.expand(8)))
    expected = torch.softmax(log_p.double(), 0) * n
    drawn = sample_posterior(model.params(ids, lengths), n, noise=row_noise.RowNoise(
        8, 0, n, torch.device("cpu")))
    index = (drawn.spans[:, 1, 0] * 4 + drawn.labels[:, 0] * 2 + drawn.labels[:, 1]).long()
    assert bool((drawn.spans[:, 0] == torch.tensor([0, 3])).all())
    counts = torch.bincount(index, minlength=8).double()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.5                                       # 1% critical value, 7 dof


@pytest.mark.parametrize("kind", ["npcfg", "ncfg"])
def test_a_dream_is_a_function_of_its_global_row(kind):
    from grammars.models.generation import sample

    model, cpu = _grammar(kind), torch.device("cpu")
    ids, trees, pre = sample(model, 10, 6, noise=row_noise.RowNoise(77, 0, 10, cpu))
    part_ids, part, part_pre = sample(model, 4, 6, noise=row_noise.RowNoise(77, 6, 4, cpu))
    width = part.spans.shape[1]
    assert ids[6:] == part_ids
    assert torch.equal(trees.spans[6:, :width], part.spans)
    assert torch.equal(trees.labels[6:, :width], part.labels)
    assert torch.equal(pre[6:, :part_pre.shape[1]], part_pre)


@pytest.mark.parametrize("kind", ["npcfg", "ncfg"])
def test_keyed_dreams_follow_the_grammar_as_generator_draws_do(kind):
    """Two-sample chi-square of 4,000 dreams each (lengths 2..6, first words) against the
    generator's: the same distribution, p(x, z | |x| <= 6)."""
    from grammars.models.generation import sample

    model, n = _grammar(kind), 4000
    keyed = sample(model, n, 6, noise=row_noise.RowNoise(5, 0, n, torch.device("cpu")))
    drawn = sample(model, n, 6, generator=torch.Generator().manual_seed(1))
    for statistic, critical in ((lambda d: d[1].lengths, 13.3),                # 4 dof, 1%
                                (lambda d: torch.tensor([x[0] for x in d[0]]), 49.6)):  # 29
        a = torch.bincount(statistic(keyed), minlength=30).double()
        b = torch.bincount(statistic(drawn), minlength=30).double()
        seen = (a + b) > 0
        assert float(((a - b)[seen] ** 2 / (a + b)[seen]).sum()) < critical


@pytest.mark.parametrize("sleep_count, first_row", [(5, 0), (0, 3)])
def test_a_fixed_dream_count_is_numbered_from_zero_on_every_rank(on, sleep_count, first_row):
    """The engine's sleep phase: a fixed em.sleep_batch_size is dreamt whole by every rank,
    numbered from 0 as one process numbers it; the default (a shard's count of dreams) numbers
    a rank's dreams from its shard's first row. Both the dreams and their replay see it."""
    from gfnem_cli.engine.estep import GFlowNetEStep

    class Dreamer:
        def __init__(self):
            self.rows = []

        def batch_size(self, batch):
            return len(batch)

        def dream(self, count):
            self.rows.append(row_noise.for_rows(count, 1, "cpu").first_row)
            return None, None

        def log_pf_of(self, x, z):
            self.rows.append(row_noise.for_rows(1, 1, "cpu").first_row)
            return torch.zeros(1)

        def sample(self, *args):
            raise AssertionError("not called")

        log_joint = sample

    family = Dreamer()
    estep = GFlowNetEStep(family, None, None, [], sleep_weight=1.0, sleep_count=sleep_count)
    with row_noise.training_step(2, first_input=3):
        estep.sleep_loss([0, 1], step=2)
    assert family.rows == [first_row, first_row]


def test_a_dream_is_a_function_of_its_row(on):
    """Dreams numbered from 3 are the tail of the same step's dreams numbered from 0."""
    from grammars.training.family import GrammarFamily

    family = GrammarFamily(_grammar(), None, "cpu", 6)

    def dreams(count: int, first: int):
        with row_noise.training_step(2, first_input=first):
            (ids, lengths), trees = family.dream(count)
        return ids, lengths

    alone, shard = dreams(5, 0), dreams(2, 3)
    assert torch.equal(shard[1], alone[1][3:])
    width = int(shard[1].max())
    assert torch.equal(shard[0][:, :width], alone[0][3:, :width])


def test_a_per_sentence_grammar_refuses_row_noise():
    from grammars.models import build_grammar
    from grammars.models.generation import sample

    model = build_grammar("cpcfg", 30, seed=0, nonterminals=3, preterminals=3, symbol_dim=8,
                          z_dim=4, word_dim=8, lstm_dim=8)
    with pytest.raises(ValueError, match="per-sentence"):
        sample(model, 3, 6, noise=row_noise.RowNoise(1, 0, 3, torch.device("cpu")))
