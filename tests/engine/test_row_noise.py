"""`train.row_noise` (engine/row_noise.py): counter-based draws keyed by (seed, step, call, row).

What data parallelism relies on: a shard's noise is the slice of the whole batch's, a row's
action does not depend on how wide its batch is padded, and the draws are uniform (and the
inverse-CDF actions distributed as the policy says). The two-rank runs that train what one
process does are in test_data_parallel.py.
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
