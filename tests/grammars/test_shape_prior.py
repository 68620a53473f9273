"""The tree-shape prior (grammars/shape_prior): its network, its MH kernel, its training, its
place in the GFlowNet-EM reward, and the recipe errors around it.

- the batched energy (one step per span width) equals a per-tree recursive evaluation;
- the rotation kernel is an exact MH kernel: on every shape of 4 and 5 words, enumerated, its
  transition matrix satisfies detailed balance with exp(−E)/Z, and the chains' code, run on
  many chains, reaches that distribution;
- PCD on gold shapes makes them lower in energy than uniform random shapes;
- the reward is log p(x, z) − E/T with T on the geometric (or linear) schedule, the M-step
  reads log p alone; the CLI trains a prior and a gfnem run reading it; one-line errors.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from tree_enumeration import all_trees

from grammars.binary_trees import BinaryTrees
from grammars.shape_prior.chains import (acceptance_probability, propose_rotation,
                                         rotation_chains)
from grammars.shape_prior.energy import ShapeEnergy, length_features
from grammars.shape_prior.reward import SCHEDULES, ShapePriorReward, TemperatureSchedule
from grammars.shape_prior.shapes import (binarize, shapes_from_spans, uniform_shapes,
                                         right_branching_shapes)


def reference_energy(energy: ShapeEnergy, spans: list[tuple[int, int]], n: int) -> torch.Tensor:
    """One tree, recursively, straight from the definition in energy.py."""
    nodes = set(spans)

    def h(i: int, j: int) -> torch.Tensor:
        if j - i == 1:
            return energy.leaf
        k = max(e for s, e in nodes if s == i and e < j) if any(
            s == i and e < j for s, e in nodes) else i + 1
        return energy.compose(torch.cat([h(i, k), h(k, j)]))

    root = h(0, n) if n >= 2 else energy.leaf
    if energy.length_conditioned:
        root = torch.cat([root, length_features(torch.tensor([n]))[0]])
    return energy.read_out(root)[0]


def shape_key(trees: BinaryTrees, row: int) -> frozenset:
    n = int(trees.lengths[row])
    return frozenset(tuple(s) for s in trees.spans[row, : n - 1].tolist())


def every_shape(n: int) -> BinaryTrees:
    return shapes_from_spans([[(i, j) for i, j, _ in t] for t in all_trees(0, n, 1)],
                             [n] * len(all_trees(0, n, 1)))


def sharp_energy(seed: int) -> ShapeEnergy:
    """A random network whose energies spread over a few nats (a non-trivial target)."""
    energy = ShapeEnergy(8, seed=seed)
    with torch.no_grad():
        energy.read_out[-1].weight.mul_(2.0)
    return energy


# ------------------------------------------------------------------------------- network
def test_batched_energy_equals_the_recursive_reference():
    energy = ShapeEnergy(6, seed=3)
    lengths = [1, 2, 3, 5, 8, 13, 2, 9, 17]
    trees = uniform_shapes(lengths, seed=5)
    # node order carries no meaning: shuffle each row's first n − 1 columns
    g = torch.Generator().manual_seed(0)
    for row, n in enumerate(lengths):
        perm = torch.randperm(max(n - 1, 0), generator=g)
        trees.spans[row, : n - 1] = trees.spans[row, perm]
    got = energy(trees)
    for row, n in enumerate(lengths):
        spans = [tuple(s) for s in trees.spans[row, : n - 1].tolist()]
        want = reference_energy(energy, spans, n)
        assert torch.allclose(got[row], want, atol=1e-5), (row, float(got[row]), float(want))
    assert got.std() > 1e-3                      # shapes do get different energies
    ones = energy(uniform_shapes([1, 1]))         # no node column at all
    assert torch.allclose(ones, reference_energy(energy, [], 1).expand(2), atol=1e-6)
    got.sum().backward()                         # and gradients reach every parameter
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in energy.parameters())


def test_binarize_right_binarizes_and_refuses_crossing_spans():
    assert binarize([(0, 5), (1, 4)], 5) == [(0, 5), (1, 5), (1, 4), (2, 4)]
    assert binarize([], 3) == [(0, 3), (1, 3)]
    assert binarize([(0, 4), (0, 2)], 4) == [(0, 4), (0, 2), (2, 4)]
    with pytest.raises(ValueError):
        binarize([(0, 3), (1, 4)], 4)


def test_uniform_shapes_are_uniform_over_the_catalan_shapes():
    trees = uniform_shapes([4] * 5000, seed=1)
    counts: dict = {}
    for row in range(len(trees)):
        counts[shape_key(trees, row)] = counts.get(shape_key(trees, row), 0) + 1
    assert len(counts) == 5
    assert all(abs(c / 5000 - 0.2) < 0.025 for c in counts.values()), counts


# ------------------------------------------------------------------------------- MH kernel
@pytest.mark.parametrize("n", [4, 5])
def test_rotation_kernel_satisfies_detailed_balance_exactly(n):
    energy = sharp_energy(n)
    shapes = every_shape(n)
    keys = [shape_key(shapes, r) for r in range(len(shapes))]
    index = {k: r for r, k in enumerate(keys)}
    with torch.no_grad():
        e = energy(shapes).double()
    size = len(keys)
    P = torch.zeros(size, size, dtype=torch.float64)
    for v in range(n - 1):
        for direction in (0.25, 0.75):               # < 0.5: right rotation, else left
            u = torch.tensor([[(v + 0.5) / (n - 1), 0.0, direction, 0.0]] * size)
            proposal, changed = propose_rotation(shapes, uniforms=u)
            q = 1.0 / (2 * (n - 1))
            for r in range(size):
                if changed[r]:
                    t = index[shape_key(proposal, r)]
                    assert t != r
                    P[r, t] += q * float(acceptance_probability(e[r], e[t]))
    P += torch.diag(1.0 - P.sum(1))
    pi = torch.softmax(-e, 0)
    flow = pi[:, None] * P
    assert torch.allclose(flow, flow.t(), atol=1e-12)          # detailed balance
    assert torch.allclose(pi @ P, pi, atol=1e-12)
    assert bool((torch.linalg.matrix_power(P, 2 * n) > 0).all())  # irreducible (+ aperiodic)


def test_rotation_chains_reach_exp_minus_energy():
    torch.manual_seed(0)
    energy = sharp_energy(7)
    chains = 6000
    lengths = [4] * (chains // 2) + [5] * (chains // 2)       # two lengths in one batch
    start = right_branching_shapes(lengths)
    g = torch.Generator().manual_seed(1)
    trees, energies, acceptance = rotation_chains(energy, start, 120, generator=g)
    assert 0.05 < float(acceptance) < 0.95
    assert torch.allclose(energies, energy(trees).detach(), atol=1e-5)
    for n, rows in ((4, range(0, chains // 2)), (5, range(chains // 2, chains))):
        every = every_shape(n)
        with torch.no_grad():
            target = torch.softmax(-energy(every).double(), 0)
        position = {shape_key(every, r): r for r in range(len(every))}
        counts = torch.zeros(len(every), dtype=torch.float64)
        for row in rows:
            assert int(trees.lengths[row]) == n
            counts[position[shape_key(trees, row)]] += 1
        tv = 0.5 * float((counts / counts.sum() - target).abs().sum())
        assert target.max() > 2 * target.min()          # the target is far from uniform
        assert tv < 0.05, (n, tv)


# ------------------------------------------------------------------------------- training
def _config(**train):
    from gfnem_cli.engine.config import resolve_config
    from grammars.recipe import GRAMMAR_DEFAULTS

    sets = ["method=shape-ebm", "train.batch_size=16", "train.lr=0.01", "train.betas=[0.9,0.99]",
            "shape_ebm.dim=8", "shape_ebm.valid_mh_steps=20"]
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return resolve_config(GRAMMAR_DEFAULTS, None, sets)


def test_pcd_makes_gold_shapes_lower_in_energy_than_random_ones():
    from grammars.data.batching import SentenceBatch
    from grammars.shape_prior.training import ShapeEBMMethod

    torch.manual_seed(0)
    lengths = [3 + k % 8 for k in range(200)]
    gold = [[(0, j) for j in range(n, 1, -1)] for n in lengths]   # left-branching "gold"

    class Table:
        shapes = shapes_from_spans(gold, lengths)

        def get(self, rows, device=None):
            from grammars.shape_prior.shapes import pad_nodes, take_rows
            picked = take_rows(self.shapes, rows)
            return pad_nodes(picked, int(picked.lengths.max()) - 1)

    valid = shapes_from_spans(gold[:60], lengths[:60])
    method = ShapeEBMMethod(ShapeEnergy(8, seed=0), Table(), valid, _config(), "cpu")
    before = method.validate()
    for step in range(150):
        rows = torch.randint(200, (16,))
        method.train_step(SentenceBatch(torch.zeros(16, 10, dtype=torch.long),
                                        torch.tensor([lengths[r] for r in rows]), rows))
    after = method.validate()
    assert abs(before["val_gap_uniform"]) < 1.0
    assert after["val_gap_uniform"] > before["val_gap_uniform"] + 2.0, (before, after)
    assert after["val_gold_below_uniform"] > 0.9
    # the state round-trips: buffer, weights, optimizer
    clone = ShapeEBMMethod(ShapeEnergy(8, seed=1), Table(), valid, _config(), "cpu")
    clone.load_state_dict(method.state_dict())
    assert torch.equal(clone.buffer.spans, method.buffer.spans)
    assert clone.validate() == after


# ------------------------------------------------------------------------------- reward
@pytest.mark.parametrize("kind", SCHEDULES)
def test_temperature_schedule_runs_from_start_to_end_over_the_horizon(kind):
    from grammars.recipe import PRIOR_SCHEDULES

    assert set(PRIOR_SCHEDULES) == set(SCHEDULES)
    s = TemperatureSchedule(1.0, 1000.0, 300, kind)
    assert s(0) == pytest.approx(1.0) and s(300) == s(10 ** 6) == 1000.0
    middle = 10 ** 1.5 if kind == "geometric" else 500.5
    assert s(150) == pytest.approx(middle)
    values = [s(g) for g in range(0, 301, 10)]
    assert values == sorted(values)


def test_the_reward_subtracts_energy_over_temperature_and_the_mstep_does_not():
    from gfnem_cli.engine.config import resolve_config
    from grammars.data.batching import make_batch
    from grammars.models import build_grammar
    from grammars.recipe import GRAMMAR_DEFAULTS
    from grammars.training.family import PriorFamily, SummedPriorFamily

    model = build_grammar("npcfg", 12, seed=0, nonterminals=3, preterminals=4, symbol_dim=8)
    prior = sharp_energy(2)
    updates = {"g": 0}
    schedule = TemperatureSchedule(1.0, 1000.0, 100, "geometric")
    reward = ShapePriorReward(model, prior, schedule, lambda: updates["g"])
    batch = make_batch([[1, 2, 3, 4, 5], [3, 4, 5, 6]], [0, 1])
    trees = uniform_shapes([5, 5, 4, 4], seed=3)
    trees.labels = torch.where(trees.labels >= 0, torch.randint(3, trees.labels.shape), -1)
    ids, lengths = batch.ids.repeat_interleave(2, 0), batch.lengths.repeat_interleave(2, 0)
    log_p = model.log_joint(ids, lengths, trees).detach()
    energy = prior(trees).detach()                 # labels do not matter to the prior
    for g in (0, 50, 100, 400):
        updates["g"] = g
        got = reward.log_joint(ids, lengths, trees)
        assert torch.allclose(got, log_p - energy / schedule(g), atol=1e-5)
    assert reward.stats()["shape_prior_energy"] == pytest.approx(float(energy.mean()), rel=1e-5)
    for cls in (PriorFamily, SummedPriorFamily):
        family = cls(model, None, "cpu", 6, reward=reward)
        updates["g"] = 0
        assert torch.allclose(family.log_joint(batch, trees, 2), log_p - energy, atol=1e-5)
        m = family.mstep_log_likelihood(batch, trees, 2)
        assert m.requires_grad                      # the M-step's, differentiable in θ
        if cls is PriorFamily:
            assert torch.allclose(m.detach(), log_p, atol=1e-5)
    config = resolve_config(GRAMMAR_DEFAULTS, None, ["method=gfnem", "em.shape_prior=x",
                                                     "train.max_model_updates=250"])
    from grammars.shape_prior.reward import schedule_from_config
    assert schedule_from_config(config).horizon == 250


# ------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def corpus(synthetic_corpus) -> Path:
    return synthetic_corpus(60, 8)


def _write(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_cli_trains_a_prior_and_a_gfnem_run_reads_it(tmp_path, corpus, runner, cli_app):
    ebm = _write(tmp_path / "ebm.yaml", {
        "method": "shape-ebm", "data": {"path": str(corpus), "max_train_length": 8},
        "shape_ebm": {"dim": 8, "valid_mh_steps": 5},
        "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3}})
    prior = tmp_path / "prior"
    result = runner.invoke(cli_app, ["train", str(ebm), "--out", str(prior), "-q"])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (prior / "metrics.jsonl").read_text().splitlines()]
    assert {"val_gap_chains", "val_gap_uniform"} <= set(records[-1])
    assert (prior / "checkpoints" / "last.pt").is_file()
    # a prior has no grammar to evaluate with: one line, exit 2
    result = runner.invoke(cli_app, ["evaluate", str(prior), "--data", str(corpus)])
    assert result.exit_code == 2 and "tree-shape prior" in result.output
    assert "Traceback" not in result.output

    gfn = {"data": {"path": str(corpus), "max_train_length": 8, "max_valid_sentences": 4},
           "model": {"kind": "npcfg", "nonterminals": 3, "preterminals": 4, "symbol_dim": 8},
           "method": "gfnem", "sampler": {"d_model": 16, "num_layers": 1, "num_heads": 2},
           "em": {"threshold_max": float("inf"), "threshold_min": float("inf"),
                  "shape_prior": str(prior), "mstep_samples": 2, "importance_weighted": True,
                  "mstep_labels": "summed"},
           "train": {"steps": 3, "max_model_updates": 3, "batch_size": 4, "eval_every": 3,
                     "checkpoint_every": 3, "valid_f1": False}}
    run = tmp_path / "run"
    result = runner.invoke(cli_app, ["train", str(_write(tmp_path / "g.yaml", gfn)), "--out",
                                     str(run), "-q"])
    assert result.exit_code == 0, result.output
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    temps = [s["shape_prior_temperature"] for s in steps]
    assert temps[0] == pytest.approx(1.0) and temps[1] == pytest.approx(10.0)  # 1000^(g/3)
    assert all(math.isfinite(s["shape_prior_energy"]) for s in steps)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert "shape_prior" in state["method"]        # the prior travels with the run


BAD = [  # (what em.shape_prior names, extra keys, words of the one-line error)
    ("missing", {}, "no such run directory"),
    ("marginal", {}, "not a tree-shape prior"),
    ("untrained", {}, "no checkpoint"),
    ("untrained", {"method": "mcem"}, "method mcem has no sampler"),
    ("untrained", {"train": {"max_model_updates": 0}}, "shape_prior_temperature_horizon"),
]


@pytest.mark.parametrize("target,extra,words", BAD)
def test_recipe_errors_are_one_line(tmp_path, corpus, runner, cli_app, target, extra, words):
    (tmp_path / "marginal").mkdir()
    _write(tmp_path / "marginal" / "config.yaml", {"family": "grammar", "method": "marginal"})
    (tmp_path / "untrained").mkdir()
    _write(tmp_path / "untrained" / "config.yaml", {"family": "grammar", "method": "shape-ebm"})
    tree = {"data": {"path": str(corpus)}, "method": "gfnem",
            "em": {"shape_prior": str(tmp_path / target)}, "train": {"max_model_updates": 5}}
    for key, value in extra.items():
        tree[key] = {**tree[key], **value} if isinstance(value, dict) else value
    out = tmp_path / "out"
    result = runner.invoke(cli_app, ["train", str(_write(tmp_path / "r.yaml", tree)), "--out",
                                     str(out), "-q"])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (out / "config.yaml").exists()          # refused before any write


@pytest.mark.parametrize("name", ["synthetic-shape-ebm", "ptb-shape-ebm",
                                  "synthetic-npcfg-gfnem-ebm", "ptb-npcfg-gfnem-ebm"])
def test_the_recipes_validate(name):
    from gfnem_cli.engine.config import resolve_config
    from grammars.recipe import GRAMMAR_DEFAULTS

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    config = resolve_config(GRAMMAR_DEFAULTS, recipes / f"{name}.yaml", [])
    if name.endswith("-ebm") and "gfnem" in name:
        assert config["em"]["shape_prior"] and config["method"] == "gfnem"
        assert (config["em"]["shape_prior_temperature_start"],
                config["em"]["shape_prior_temperature_end"]) == (1.0, 1000.0)
    else:
        assert config["method"] == "shape-ebm"
