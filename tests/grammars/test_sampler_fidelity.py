"""Posterior fidelity of the tree GFlowNet on a real grammar model: span marginals.

A tiny random neural PCFG (`build_grammar("npcfg", ...)`, output layers sharpened so its
posterior over trees is far from uniform) is the reward; a small `TreeSampler` with a uniform
P_B is trained on-policy by trajectory balance (`build_objective("tb")`), reward
`model.log_joint`, exactly as GFlowNet-EM's E-step does with the grammar frozen. Its span
marginals P_F([i, j) is a constituent | x) are computed **exactly**, by enumerating every
trajectory (merge positions × labels) and summing exp(log P_F) over those whose tree holds
[i, j) -- no sampling noise -- and compared with the inside-outside marginals
`grammars.charts.inside.span_marginals(model.params(ids, lengths))`.

Only the informative spans are scored (2 ≤ width < n: width-1 and whole-sentence spans are
constituents of every tree). The same check on the untrained sampler must fail, so the test
can tell a sampler that tracks the posterior from one that does not.

The tree-level check (enumerated tree distribution within L1 < 0.1 of the exact posterior on
a tiny grammar, TB-trained) is `tests/test_tree_gflownet.py::
test_tb_trained_sampler_matches_the_exact_posterior`; it is not repeated here. Runs on one
thread (the session fixture `one_thread` in conftest.py sets it and restores it after).
"""
from __future__ import annotations

import itertools

import torch

from gfnem_cli.engine.objectives import build_objective
from grammars.binary_trees import BinaryTrees
from grammars.gflownet import TreeSampler
from grammars.charts.inside import span_marginals
from grammars.models import build_grammar
from test_tree_gflownet import all_trajectories     # every (merge positions, labels) sequence

VOCAB, NT = 6, 2
SENTENCES = [[0, 3, 1, 4], [2, 5, 0, 1, 3], [4, 1, 2, 0, 5, 3]]
TOLERANCE = 0.02          # mean |P_F(span) − P(span | x)| over informative spans


def sharpened_grammar():
    model = build_grammar("npcfg", VOCAB, seed=3, nonterminals=NT, preterminals=3,
                          symbol_dim=16)
    with torch.no_grad():               # a random init is nearly uniform: sharpen its outputs
        for layer, scale in ((model.rule_out, 8.0), (model.term_out, 8.0),
                             (model.root_out, 2.0)):
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def sampler_span_marginals(sampler: TreeSampler, words: list[int]) -> torch.Tensor:
    """(n, n+1) P_F([i, j) in the tree | x), exactly: Σ over all trajectories of P_F(τ)."""
    n = len(words)
    trajs = all_trajectories(n, list(itertools.product(range(NT), repeat=n - 1)))
    spans = torch.tensor([[(i, j) for i, j, _ in t] for t in trajs])
    labels = torch.tensor([[a for _, _, a in t] for t in trajs])
    trees = BinaryTrees(spans=spans, labels=labels,
                        lengths=torch.full((len(trajs),), n, dtype=torch.long))
    with torch.no_grad():
        log_pf, _ = sampler.log_prob_of(torch.tensor([words]), torch.tensor([n]), trees,
                                        order="given")
    p = log_pf.double().exp()
    assert abs(float(p.sum()) - 1.0) < 1e-4          # every trajectory enumerated
    marg = torch.zeros(n, n + 1, dtype=torch.double)
    marg.index_put_((spans[..., 0].flatten(), spans[..., 1].flatten()),
                    p[:, None].expand(-1, n - 1).flatten(), accumulate=True)
    return marg


def exact_span_marginals(model, words: list[int]) -> torch.Tensor:
    n = len(words)
    with torch.no_grad():
        return span_marginals(model.params(torch.tensor([words]), torch.tensor([n])))[0].double()


def informative(n: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n + 1), indexing="ij")
    return (j - i >= 2) & (j - i < n)


def mean_abs_span_error(sampler, model) -> list[float]:
    out = []
    for words in SENTENCES:
        mask = informative(len(words))
        diff = sampler_span_marginals(sampler, words) - exact_span_marginals(model, words)
        out.append(float(diff[mask].abs().mean()))
    return out


def train_tb(sampler: TreeSampler, model, steps: int = 500, n_per: int = 32,
             lr: float = 3e-3) -> None:
    """On-policy TB (temperature 1, uniform P_B), reward log p_θ(x, z), every sentence in
    every batch, learning rates decayed 10x (log Z head at 10x the policy's)."""
    tb = build_objective("tb")
    log_z = [p for k, p in sampler.named_parameters() if k.startswith("heads.log_z_")]
    policy = [p for k, p in sampler.named_parameters() if not k.startswith("heads.log_z_")]
    opt = torch.optim.Adam([{"params": policy, "lr": lr}, {"params": log_z, "lr": 10 * lr}])
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - 0.9 * i / steps)
    longest = max(map(len, SENTENCES))
    ids = torch.tensor([w + [0] * (longest - len(w)) for w in SENTENCES])
    lengths = torch.tensor([len(w) for w in SENTENCES])
    for _ in range(steps):
        tr = sampler.sample(ids, lengths, num_per_input=n_per, reward=model)
        assert tr.on_policy
        opt.zero_grad()
        tb(tr).backward()
        torch.nn.utils.clip_grad_norm_(sampler.parameters(), 3.0)
        opt.step()
        decay.step()


def test_exact_marginals_are_informative_and_enumeration_is_exact():
    """The target is far from the untrained sampler; P_F summed over trajectories is a
    distribution whose full-span and leaf marginals are 1."""
    model = sharpened_grammar()
    torch.manual_seed(0)
    sampler = TreeSampler(VOCAB, NT, d_model=32, num_layers=1, num_heads=2)
    for words in SENTENCES:
        n = len(words)
        marg = sampler_span_marginals(sampler, words)
        assert abs(float(marg[0, n]) - 1.0) < 1e-6
        exact = exact_span_marginals(model, words)
        assert float(exact[informative(n)].max()) > 0.7     # a sharp, non-trivial posterior
    untrained = mean_abs_span_error(sampler, model)
    assert min(untrained) > 5 * TOLERANCE, untrained         # the check can fail


def test_tb_trained_sampler_span_marginals_match_inside_outside():
    model = sharpened_grammar()
    torch.manual_seed(0)
    sampler = TreeSampler(VOCAB, NT, d_model=32, num_layers=1, num_heads=2,
                          learn_backward=False)
    before = mean_abs_span_error(sampler, model)
    train_tb(sampler, model)
    after = mean_abs_span_error(sampler, model)
    assert max(after) < TOLERANCE, (before, after)
