"""A grammar GFlowNet-EM step reads from the device only where it must (issue 14 item 3).

On a GPU every tensor -> host conversion waits for the queued kernels. The tree sampler sizes
its rollouts by host ints (`Forest.widest`, the batch's host lengths) and checks invariants
without a wait (`engine/device_checks.expect`), so a real step (synthetic recipe, M-step
every step, local search and the sleep phase on) converts device tensors only for `settle`'s
one transfer and the bracketing DP's width counts; every other conversion reads a host copy
(`tests/benchmarks/host_reads.py` counts them). Also: `widest` equals num_roots.max() after every
merge and split of rollouts, walks back and local search (the bound the rollouts rely on).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grammars.gflownet import local_search
from grammars.gflownet.forest import Forest
from test_tree_gflownet import ToyPCFG
from test_local_search import untrained

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
from host_reads import count_host_reads  # noqa: E402

# (file, function): the conversions a step may make. Device reads: `settle` and the width
# counts of the bracketing DP (one per M-step). Host reads: the batch's host lengths, local
# search's k (host RNG), the sleep phase's dream (generated on the host from one copy of the
# grammar's tables).
DEVICE_READS = {("engine/optimizer_step.py", "settle"),
                ("models/bracketing_score.py", "bracketing_log_prob")}
HOST_READS = {("training/family.py", "inputs"), ("gflownet/sampler.py", "expand_rows"),
              ("evaluation/likelihood.py", "tokens_in"), ("gflownet/local_search.py", "_round_k"),
              ("models/generation.py", "sample"), ("models/generation.py", "_one_round"),
              ("models/generation.py", "_assemble"), ("data/batching.py", "make_batch")}
EVERYTHING_ON = ["model.nonterminals=4", "model.preterminals=5", "model.symbol_dim=16",
                 "sampler.d_model=16", "sampler.num_layers=1", "sampler.num_heads=2",
                 "train.batch_size=6", "em.mstep_samples=3", "em.threshold_max=1e9",
                 "em.threshold_min=1e9", "sampler.local_search_rounds=1",
                 "sampler.local_search_k=uniform", "sampler.learn_backward=true",
                 "objective.name=subtb", "sampler.local_search_continue=true",
                 "em.mstep_reuse_samples=true", "em.mstep_local_search_rounds=2",
                 "em.importance_weighted=false", "em.sleep_weight=0.5"]


@pytest.fixture(scope="module")
def corpus(synthetic_corpus) -> Path:
    return synthetic_corpus(60, 8)


@pytest.mark.parametrize("loss", ["rescore", "path"])
def test_a_grammar_em_step_reads_the_device_only_for_the_gate_the_checks_and_widths(
        corpus, monkeypatch, loss):
    from grammars.gflownet.sampler import TreeSampler

    handed, last = [], {}

    def on_the_device(batch):
        """What `Trainer` does on a GPU: the batch on the device, its lengths kept on the
        host (a distinct tensor here, so that the sampler's entry can be checked)."""
        batch = batch.to("cpu")
        batch.host_lengths = batch.lengths.clone()
        last["batch"] = batch
        return batch

    real_expand = TreeSampler.expand_rows

    def expand(self, ids, lengths, rows):
        handed.append(lengths is not last["batch"].lengths)   # never the device lengths
        return real_expand(self, ids, lengths, rows)
    monkeypatch.setattr(TreeSampler, "expand_rows", expand)
    sites, steps = count_host_reads(REPO / "recipes" / "synthetic-npcfg-gfnem.yaml",
                                    [f"data.path={corpus}", *EVERYTHING_ON,
                                     f"sampler.local_search_loss={loss}"], 4, REPO,
                                    prepare_batch=on_the_device)
    assert steps == 3 and handed and all(handed), handed
    outside = {site: n for site, n in sites.items() if site not in DEVICE_READS | HOST_READS}
    assert not outside, sorted(outside.items())
    for site in DEVICE_READS:
        assert sites[site] == steps, (site, sites[site])    # once a step each


def _checked(monkeypatch) -> list[int]:
    """Forest.merge and .split wrapped: each result's widest must be num_roots.max()."""
    seen = []
    for name in ("merge", "split"):
        real = getattr(Forest, name)

        def wrapped(self, *args, _real=real, **kwargs):
            out = _real(self, *args, **kwargs)
            assert out.widest == max(int(out.num_roots.max()), 1), (out.widest, out.num_roots)
            seen.append(out.widest)
            return out
        monkeypatch.setattr(Forest, name, wrapped)
    return seen


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(2, 7), min_size=1, max_size=5), seed=st.integers(0, 99),
       k=st.integers(1, 6))
def test_widest_is_the_most_roots_through_rollouts_walks_and_local_search(lengths, seed, k):
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = _checked(monkeypatch)
        torch.manual_seed(seed)
        grammar = ToyPCFG(nt=2, t=2, v=5, scale=1.0, seed=seed)
        sampler = untrained(True)
        ids = torch.randint(5, (len(lengths), max(lengths)))
        lens = torch.tensor(lengths)
        with torch.no_grad():
            traj = sampler.sample(ids, lens, 2, reward=grammar)
            sampler.log_prob_of(ids, lens, traj.z)
            local_search(sampler, ids, lens, traj, grammar, k=k, rounds=2, k_draw="uniform")
        assert seen
