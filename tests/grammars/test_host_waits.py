"""A grammar GFlowNet-EM step reads from the device only where it must (issue 14 item 3).

On a GPU every tensor -> host conversion waits for the queued kernels. The tree sampler sizes
its rollouts by host ints (`Forest.widest`, the batch's host lengths) and checks invariants
without a wait (`engine/device_checks.expect`), so a real step (synthetic recipe, M-step
every step, local search and the sleep phase on) converts device tensors only for `settle`'s
one transfer and the bracketing DP's width counts; every other conversion reads a host copy
(`tests/benchmarks/host_reads.py` counts them). Nor does it run an op sized by the data (a
wait too) on a device tensor except those in DATA_WAITS (none now), so that a new one fails
here. Also: `widest` equals num_roots.max() after every merge and split of
rollouts, walks back and local search (the bound the rollouts rely on).
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
from host_reads import DataWaits, count_host_reads  # noqa: E402

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
# (file, function, op): the ops sized by the data that a step still runs on device tensors.
# None left: the complete trees' reward (`tree_score`) and the bracketing DP's width counts
# run in fixed shapes (issue 14).
DATA_WAITS: set[tuple[str, str, str]] = set()
# (file, function): where such ops run on host tensors (the dream, on the host generator)
HOST_DATA_OPS = {("models/generation.py", "_one_round"), ("models/generation.py", "_assemble"),
                 ("models/generation.py", "<dictcomp>"), ("models/generation.py", "sample")}
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
def test_a_grammar_em_step_reads_the_device_only_for_the_gate_and_widths_and_known_ops(
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
    sites, waits, steps = count_host_reads(
        REPO / "recipes" / "synthetic-npcfg-gfnem.yaml",
        [f"data.path={corpus}", *EVERYTHING_ON, f"sampler.local_search_loss={loss}"], 4, REPO,
        prepare_batch=on_the_device)
    assert steps == 3 and handed and all(handed), handed
    outside = {site: n for site, n in sites.items() if site not in DEVICE_READS | HOST_READS}
    assert not outside, sorted(outside.items())
    for site in DEVICE_READS:
        assert sites[site] == steps, (site, sites[site])    # once a step each
    on_device = {site for site in waits if site[:2] not in HOST_DATA_OPS}
    assert on_device == DATA_WAITS, sorted(on_device ^ DATA_WAITS)


def test_the_watcher_names_each_op_sized_by_the_data_and_only_those():
    x = torch.randn(6, requires_grad=True)
    mask, n = x.detach() > 0, torch.tensor(3)
    seen = []
    for run in (lambda: x[mask], lambda: torch.where(mask),
                lambda: torch.tensor([1, 2]).repeat_interleave(torch.tensor([1, 2])),
                lambda: torch.zeros(n), lambda: x[mask].sum().backward(),
                lambda: torch.zeros(6).masked_fill(mask, 1.0), lambda: x.detach()[mask.nonzero()],
                lambda: torch.arange(2).repeat_interleave(torch.tensor([1, 2]), output_size=3),
                lambda: torch.zeros(6).index_put_((mask,), torch.tensor(0.0))):
        watch = DataWaits(REPO)
        with watch:
            run()
        seen.append(sorted(kind for *_, kind in watch.sites.elements()))
    assert seen == [["index[bool]"], ["nonzero"], ["repeat_interleave"], ["scalar read"],
                    ["index[bool]", "index_put[bool] (backward)"], [], ["nonzero"], [], []]


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
