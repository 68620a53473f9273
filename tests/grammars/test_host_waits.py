"""A grammar GFlowNet-EM step reads from the device only where it must (issue 14 item 3).

On a GPU every tensor -> host conversion waits for the queued kernels. The tree sampler sizes
its rollouts by host ints (`Forest.widest`, the batch's host lengths) and checks invariants
without a wait (`engine/device_checks.expect`), so a real step (synthetic recipe, M-step
every step, local search and the sleep phase on) converts device tensors only for the M-step
gate's E-loss, `settle`'s one transfer and the bracketing DP's width counts; every other
conversion reads the batch's host copy. Also: `widest` equals num_roots.max() after every
merge and split of rollouts, walks back and local search (the bound the rollouts rely on).
"""
from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gfnem_cli.app import app
from grammars.gflownet import local_search
from grammars.gflownet.forest import Forest
from test_tree_gflownet import ToyPCFG
from test_local_search import untrained

REPO = Path(__file__).resolve().parents[2]
# (file, function): the conversions a step may make. Device reads: the gate, `settle`, the
# width counts of the bracketing DP (one per M-step), and the reward's node terms, which
# select the nodes of each rule kind (a wait per kind and score call: the one left to remove).
# Host reads: the batch's host lengths, local search's k (host RNG), the sleep phase's dream
# (generated on the host from one copy of the grammar's tables).
DEVICE_READS = {("engine/em.py", "train_step"), ("engine/optimizer_step.py", "settle"),
                ("models/bracketing_score.py", "bracketing_log_prob"),
                ("models/forest_score.py", "forest_node_terms")}
HOST_READS = {("training/family.py", "inputs"), ("gflownet/sampler.py", "expand_rows"),
              ("evaluation/likelihood.py", "tokens_in"), ("gflownet/local_search.py", "_round_k"),
              ("models/generation.py", "sample"), ("models/generation.py", "_one_round"),
              ("models/generation.py", "_assemble"), ("data/batching.py", "make_batch")}


def _site(stack) -> tuple[str, str] | None:
    for frame in reversed(stack):
        if "device_checks.py" in frame.filename:
            return None                       # an `expect`: asynchronous on a GPU
        if "/torch/optim/" in frame.filename:
            return None                       # Adam's step counters, kept on the host
        path = Path(frame.filename)
        if REPO in path.parents and ".venv" not in path.parts and "tests" not in path.parts:
            return ("/".join(path.parts[-2:]), frame.name)
    return ("torch", "internal")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    done = CliRunner().invoke(app, ["prepare", "synthetic", "--out", str(out),
                                    "--num-sentences", "120", "--max-length", "10"])
    assert done.exit_code == 0, done.output
    return out


def test_a_grammar_em_step_reads_the_device_only_for_the_gate_the_checks_and_widths(
        corpus, tmp_path, monkeypatch):
    from gfnem_cli.engine import trainer as trainer_module
    from grammars.gflownet.sampler import TreeSampler

    sites, handed, counting = collections.Counter(), [], {"on": False, "steps": 0}
    real_init = trainer_module.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real_step = self.method.train_step

        def counted(batch):
            # what `Trainer` does on a GPU: the batch on the device, its lengths kept on
            # the host (a distinct tensor here, so the sampler's entry can be checked)
            batch = batch.to("cpu")
            batch.host_lengths = batch.lengths.clone()
            counting["batch"] = batch
            counting["steps"] += 1
            counting["on"] = counting["steps"] >= 2          # the first step builds state
            try:
                return real_step(batch)
            finally:
                counting["on"] = False
        self.method.train_step = counted
    monkeypatch.setattr(trainer_module.Trainer, "__init__", init)

    real_expand = TreeSampler.expand_rows

    def expand(self, ids, lengths, rows):
        if counting["on"]:                  # never the batch's device lengths
            handed.append(lengths is not counting["batch"].lengths)
        return real_expand(self, ids, lengths, rows)
    monkeypatch.setattr(TreeSampler, "expand_rows", expand)

    for name in ("__float__", "__int__", "__bool__", "item", "tolist", "__index__"):
        real = getattr(torch.Tensor, name)

        def conversion(self, *args, _real=real, **kwargs):
            if counting["on"]:
                site = _site(traceback.extract_stack()[:-1])
                if site is not None:
                    sites[site] += 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, conversion)

    done = CliRunner().invoke(app, [
        "train", str(REPO / "recipes" / "synthetic-npcfg-gfnem.yaml"), "--out",
        str(tmp_path / "run"), "-q", "--device", "cpu", "--set", f"data.path={corpus}",
        "--set", "train.steps=4", "--set", "train.eval_every=1000",
        "--set", "train.batch_size=6", "--set", "model.nonterminals=4",
        "--set", "model.preterminals=5", "--set", "model.symbol_dim=16",
        "--set", "sampler.d_model=16", "--set", "sampler.num_layers=1",
        "--set", "sampler.num_heads=2", "--set", "em.mstep_samples=3",
        "--set", "em.threshold_max=1e9", "--set", "em.threshold_min=1e9",
        "--set", "sampler.local_search_rounds=2", "--set", "sampler.local_search_k=uniform",
        "--set", "sampler.learn_backward=true", "--set", "objective.name=subtb",
        "--set", "sampler.local_search_continue=true", "--set", "em.mstep_reuse_samples=true",
        "--set", "em.mstep_local_search_rounds=1", "--set", "em.importance_weighted=false",
        "--set", "em.sleep_weight=0.5"],
        catch_exceptions=False)
    assert done.exit_code == 0, done.output
    steps = counting["steps"] - 1
    assert steps == 3 and handed and all(handed), handed
    outside = {site: n for site, n in sites.items()
               if site not in DEVICE_READS | HOST_READS and site != ("torch", "internal")}
    assert not outside, sorted(outside.items())
    assert sites[("engine/em.py", "train_step")] == steps                 # the gate
    assert sites[("engine/optimizer_step.py", "settle")] == steps
    assert sites[("models/bracketing_score.py", "bracketing_log_prob")] == steps


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
