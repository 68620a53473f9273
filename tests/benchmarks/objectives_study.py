"""Compare the eight GFlowNet objectives on an enumerable target: same sampler, steps, seeds.

    python tests/benchmarks/objectives_study.py --target multiset --steps 400 --seeds 3 --out runs/objectives

Writes DIR/objectives_<target>.csv (objective, seed, step, l1), DIR/objectives_<target>.png
(L1 against steps, mean over seeds, log scale) and prints a markdown table of the final L1
and the steps needed to reach L1 < --threshold (0.1).

    python tests/benchmarks/objectives_study.py --target all --steps 300 --seeds 3 --out /tmp/study

A target is anything following the `Target` protocol below. Two kinds are registered:
- `multiset` / `multiset-large` (alias `toy`): the toy multiset DAG of tests/toy_targets.py
  with a tabular sampler;
- `tree`: the tree posterior p(z | x) of a small synthetic grammar (a random N-PCFG, NT=2,
  T=3, its output layers sharpened so the posterior is not flat) for two fixed 5-word
  sentences, sampled by a tiny `grammars.gflownet.TreeSampler` (d_model 32, 1 layer, uniform
  P_B). The reward is `model.log_joint` (preterminals summed out), flows via
  `partial_log_joint`. Both distributions are exact: the posterior by enumerating all
  224 labeled binary trees, the sampler's by enumerating all 384 trajectories per sentence.
- `sets`, `sets-small`, `sequences`, `phylo`: the discrete tasks of da Silva et al. (NeurIPS
  2024, Table 1), in divergence_tasks/ (2×64 LeakyReLU MLP, phylo a 2-layer GIN; batch 128
  (phylo 64), Adam 1e-3 / log Z 1e-1, both annealed linearly to 0; `sets` has D = 32, N = 16 and a Monte Carlo L1,
  `sets-small` D = 12, N = 6 and an exact one; `sequences` and `phylo` exact L1). The table
  then carries the paper's Table 1 column. Task options: `--policy gin|mlp` (phylo; default
  gin, the paper's), `--reward-scale S` (sequences: log r times S, a peakier target),
  `--task-seed K` (the task's data draw, default 0). `--log-z-init exact` starts log Z at the
  target's exact value instead of 0 (what TB's learned log Z costs on these tasks).

    python tests/benchmarks/objectives_study.py --target sets --steps 512 --seeds 3
    python tests/benchmarks/objectives_study.py --target phylo --objectives tb --log-z-init exact

`--target all` runs `multiset` and `tree`, `paper` runs `sets` and `sequences`, and the
default `bench` (what `make bench` runs) runs `multiset`, `sets` and `sequences`. Each target brings its own
learning rates, batch, schedule and threshold unless --lr / --lr-flows / --samples-per-input /
--threshold are given. Incremental: each finished (objective, seed) cell is appended to the CSV
at once, and a rerun with the same settings (DIR/objectives_<target>.json) skips finished cells.
The table is also written to DIR/objectives_<target>.md. --quick (or GFNEM_BENCH_QUICK=1, as
run_all.py --quick sets) shortens the default run to a few CPU minutes.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Protocol

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))                  # tests/benchmarks, for divergence_tasks
sys.path.insert(0, str(HERE.parent))           # tests/, for toy_targets
sys.path.insert(0, str(HERE.parent.parent))    # the repository, if gfnem is not installed

import torch  # noqa: E402

from gfnem_cli.engine.objectives import OBJECTIVES, build_objective  # noqa: E402
from gfnem_cli.engine.trajectories import Trajectories  # noqa: E402
from divergence_tasks import PAPER_TABLE1, TASKS, options  # noqa: E402


class Target(Protocol):
    """What the study needs from a target: a fresh sampler, on-policy batches, two distributions."""

    name: str

    def new_sampler(self, seed: int) -> torch.nn.Module:
        """A sampler whose log Z / state-flow parameters have 'log_z' / 'flow' in their names."""

    def sample(self, sampler: torch.nn.Module, num_per_input: int,
               generator: torch.Generator | None = None) -> Trajectories:
        """num_per_input on-policy trajectories for each of the target's inputs, flows filled."""

    def exact_distribution(self) -> torch.Tensor:
        """(inputs, objects): R/Z per input."""

    def sampler_distribution(self, sampler: torch.nn.Module) -> torch.Tensor:
        """(inputs, objects): the sampler's distribution over objects (exact or estimated)."""


def _multiset(**options) -> Callable[[], Target]:
    def make():
        from toy_targets import MultisetTarget
        return MultisetTarget(**options)
    return make


def _all_trees(i: int, j: int, nt: int) -> list[list[tuple[int, int, int]]]:
    """Every labeled binary tree over [i, j) as a bottom-up list of (start, end, label)."""
    if j - i == 1:
        return [[]]
    return [left + right + [(i, j, a)]
            for k in range(i + 1, j)
            for left in _all_trees(i, k, nt) for right in _all_trees(k, j, nt)
            for a in range(nt)]


def _all_trajectories(n: int, nt: int) -> list[list[tuple[int, int, int]]]:
    """Every (merge position, label) action sequence over n words, as nodes in build order."""
    out = []
    for positions in itertools.product(*[range(n - 1 - t) for t in range(n - 1)]):
        for labels in itertools.product(range(nt), repeat=n - 1):
            roots, nodes = [(i, i + 1) for i in range(n)], []
            for p, a in zip(positions, labels):
                (i, _), (_, j) = roots[p], roots[p + 1]
                roots[p:p + 2] = [(i, j)]
                nodes.append((i, j, a))
            out.append(nodes)
    return out


def _to_trees(node_lists, n: int):
    from grammars.binary_trees import BinaryTrees
    spans = torch.tensor([[[i, j] for i, j, _ in nodes] for nodes in node_lists], dtype=torch.long)
    labels = torch.tensor([[a for _, _, a in nodes] for nodes in node_lists], dtype=torch.long)
    return BinaryTrees(spans=spans.view(len(node_lists), n - 1, 2),
                       labels=labels.view(len(node_lists), n - 1),
                       lengths=torch.full((len(node_lists),), n, dtype=torch.long))


class TreePosteriorTarget:
    """p(z | x) of a small random N-PCFG for fixed sentences, sampled by a tiny TreeSampler.

    Objects are the labeled binary trees of each sentence (all sentences of one length, so
    the (inputs, objects) tables line up); both distributions are computed exactly.
    """

    name = "tree"
    lr, lr_flows, threshold = 0.01, 0.05, 0.2

    def __init__(self, vocab: int = 6, nonterminals: int = 2, preterminals: int = 3,
                 sentences: tuple[tuple[int, ...], ...] = ((0, 3, 1, 4, 2), (5, 2, 2, 0, 1)),
                 sharpness: float = 5.0, grammar_seed: int = 0, d_model: int = 32,
                 num_layers: int = 1, num_heads: int = 2):
        from grammars.models import build_grammar
        n = len(sentences[0])
        if any(len(s) != n for s in sentences) or n < 2:
            raise ValueError("the tree target needs sentences of one length >= 2")
        self.vocab, self.nt, self.n = vocab, nonterminals, n
        self.sizes = dict(d_model=d_model, num_layers=num_layers, num_heads=num_heads)
        self.model = build_grammar("npcfg", vocab, seed=grammar_seed, nonterminals=nonterminals,
                                   preterminals=preterminals, symbol_dim=16).eval()
        with torch.no_grad():   # a random init is near-uniform: sharpen its three output layers
            for layer in (self.model.root_out, self.model.rule_out, self.model.term_out):
                layer.weight.mul_(sharpness)
                layer.bias.mul_(sharpness)
        self.model.requires_grad_(False)
        self.ids = torch.tensor(sentences, dtype=torch.long)
        self.lengths = torch.full((len(sentences),), n, dtype=torch.long)
        b = len(sentences)
        trees = _all_trees(0, n, nonterminals)
        index = {frozenset(t): k for k, t in enumerate(trees)}
        tree_batch = _to_trees(trees, n)
        with torch.no_grad():
            log_r = torch.stack([self.model.log_joint(row.expand(len(trees), n),
                                                      tree_batch.lengths, tree_batch)
                                 for row in self.ids])
        self._exact = torch.softmax(log_r.double(), dim=1)
        trajectories = _all_trajectories(n, nonterminals)
        self.traj_to_tree = torch.tensor([index[frozenset(t)] for t in trajectories])
        self.num_objects, self.num_trajectories = len(trees), len(trajectories)
        one = _to_trees(trajectories, n)
        self.traj_trees = type(one)(spans=one.spans.repeat(b, 1, 1), labels=one.labels.repeat(b, 1),
                                    lengths=one.lengths.repeat(b))

    def new_sampler(self, seed: int) -> torch.nn.Module:
        from grammars.gflownet import TreeSampler
        torch.manual_seed(seed)
        return TreeSampler(self.vocab, self.nt, learn_backward=False, **self.sizes)

    def sample(self, sampler, num_per_input: int, generator: torch.Generator | None = None):
        return sampler.sample(self.ids, self.lengths, num_per_input=num_per_input,
                              reward=self.model, need_flows=True, generator=generator)

    def exact_distribution(self) -> torch.Tensor:
        return self._exact

    def sampler_distribution(self, sampler) -> torch.Tensor:
        """P_T(z) = Σ over the trajectories to z of P_F(τ), by enumerating every trajectory."""
        with torch.no_grad():
            log_pf, _ = sampler.log_prob_of(self.ids, self.lengths, self.traj_trees, order="given")
        probs = log_pf.double().exp().view(len(self.ids), self.num_trajectories)
        out = torch.zeros(len(self.ids), self.num_objects, dtype=torch.float64)
        return out.index_add_(1, self.traj_to_tree, probs)


TARGETS: dict[str, Callable[[], Target]] = {
    "multiset": _multiset(),                                            # 120 trajectories/input
    "multiset-large": _multiset(num_types=4, max_size=5, reward_scale=2.0),  # 1364 trajectories
    "tree": TreePosteriorTarget,     # 2 sentences x 224 trees, 384 trajectories each
    **TASKS,                         # sets, sets-small, sequences, phylo (da Silva et al., 2024)
}
ALIASES = {"toy": ["multiset"], "all": ["multiset", "tree"], "paper": ["sets", "sequences"],
           "bench": ["multiset", "sets", "sequences"]}     # bench: the default, what make bench runs


def l1_distance(target: Target, sampler) -> float:
    """The target's own `l1` when it has one (Monte Carlo or a cheaper exact form), else from
    the two (inputs, objects) tables, averaged over inputs."""
    if hasattr(target, "l1"):
        with torch.no_grad():
            return float(target.l1(sampler))
    with torch.no_grad():
        diff = target.sampler_distribution(sampler) - target.exact_distribution()
        return float(diff.abs().sum(dim=1).mean())


def train(target: Target, objective_name: str, seed: int, steps: int, eval_every: int,
          num_per_input: int, lr: float, lr_flows: float, anneal: bool = False,
          log_z_init: str = "zero") -> list[tuple[int, float]]:
    """One (objective, seed) cell: L1 every eval_every steps. With `anneal`, both learning
    rates decay linearly to 0 over `steps` (the paper's polynomial annealing, power 1)."""
    torch.manual_seed(seed)
    sampler = target.new_sampler(seed)
    options.init_log_z(sampler, target, log_z_init)
    if hasattr(sampler, "parameter_groups"):
        policy, flows = sampler.parameter_groups()
    else:
        flows = [p for n, p in sampler.named_parameters() if "log_z" in n or "flow" in n]
        policy = [p for n, p in sampler.named_parameters() if not ("log_z" in n or "flow" in n)]
    optimizer = torch.optim.Adam([{"params": policy, "lr": lr}, {"params": flows, "lr": lr_flows}])
    schedule = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.0, 1 - k / steps))
                if anneal else None)
    objective = build_objective(objective_name)
    generator = torch.Generator().manual_seed(seed)
    curve = [(0, l1_distance(target, sampler))]
    for step in range(1, steps + 1):
        loss = objective(target.sample(sampler, num_per_input, generator=generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, l1_distance(target, sampler)))
    return curve


def first_below(curve: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, l1 in curve if l1 < threshold), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few CPU minutes: fewer steps and 2 seeds (also GFNEM_BENCH_QUICK=1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps; default 400 (paper tasks: 512), quick 100 (64)")
    parser.add_argument("--seeds", type=int, default=None, help="default 3, quick 2")
    parser.add_argument("--out", type=Path, default=Path("runs/objectives"))
    parser.add_argument("--target", choices=sorted([*TARGETS, *ALIASES]), default="bench",
                        help="a target, or 'toy' (multiset), 'all' (multiset, tree), 'paper' "
                             "(sets, sequences), 'bench' (multiset, sets, sequences; the default)")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between L1 evaluations; default: the target's (10)")
    parser.add_argument("--samples-per-input", type=int, default=None,
                        help="trajectories per input; default: the target's (16; paper tasks 128)")
    parser.add_argument("--lr", type=float, default=None,
                        help="policy learning rate (Adam); default: the target's (multiset 0.05)")
    parser.add_argument("--lr-flows", type=float, default=None,
                        help="log Z / flow learning rate; default: the target's (multiset 0.2)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="L1 threshold for steps-to-threshold; default: the target's (0.1)")
    options.add_arguments(parser)
    args = parser.parse_args(argv)
    keys = ALIASES.get(args.target, [args.target])
    options.check(parser, args, keys)
    args.quick = args.quick or os.environ.get("GFNEM_BENCH_QUICK") == "1"
    torch.set_num_threads(1)   # tiny tensors: threads only add overhead on shared cores

    args.out.mkdir(parents=True, exist_ok=True)
    for key in keys:
        run_target(key, args)


def settings_of(key: str, target, args) -> dict:
    """Everything that makes two runs of one target comparable (the resume key)."""
    paper = key in TASKS
    pick = lambda given, attr, default: given if given is not None else getattr(target, attr, default)  # noqa: E731
    steps = args.steps or ((64 if paper else 100) if args.quick else (512 if paper else 400))
    return {"target": key, "steps": steps,
            "eval_every": pick(args.eval_every, "eval_every", 10),
            "samples_per_input": pick(args.samples_per_input, "samples_per_input", 16),
            "lr": pick(args.lr, "lr", 0.05), "lr_flows": pick(args.lr_flows, "lr_flows", 0.2),
            "anneal": bool(getattr(target, "anneal", False)),
            **options.settings(key, target, args)}


def load_finished(csv_path: Path, json_path: Path, settings: dict) -> dict:
    """{(objective, seed): curve} of the cells a previous run with these settings finished;
    the CSV is rewritten without unfinished cells, or started afresh if settings changed."""
    cells: dict[tuple[str, int], list[tuple[int, float]]] = {}
    if csv_path.exists() and json_path.exists() and json.loads(json_path.read_text()) == settings:
        with open(csv_path, newline="") as handle:
            for row in csv.DictReader(handle):
                cells.setdefault((row["objective"], int(row["seed"])), []).append(
                    (int(row["step"]), float(row["l1"])))
        cells = {k: c for k, c in cells.items() if c and c[-1][0] == settings["steps"]}
    elif csv_path.exists():
        print(f"{csv_path}: other settings than this run's; starting afresh", file=sys.stderr)
    json_path.write_text(json.dumps(settings, indent=1))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["objective", "seed", "step", "l1"])
        for (name, seed), curve in cells.items():
            writer.writerows((name, seed, t, f"{v:.6f}") for t, v in curve)
    return cells


def run_target(key: str, args) -> None:
    started = time.time()
    target = TARGETS[key](**options.for_target(key, args))
    cfg = settings_of(key, target, args)
    seeds = args.seeds or (2 if args.quick else 3)
    threshold = args.threshold if args.threshold is not None else getattr(target, "threshold", 0.1)
    csv_path, json_path = args.out / f"objectives_{key}.csv", args.out / f"objectives_{key}.json"
    finished = load_finished(csv_path, json_path, cfg)
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for name in args.objectives:
        for seed in range(seeds):
            if (name, seed) in finished:
                curve = finished[(name, seed)]
            else:
                cell_start = time.time()
                curve = train(target, name, seed, cfg["steps"], cfg["eval_every"],
                              cfg["samples_per_input"], cfg["lr"], cfg["lr_flows"], cfg["anneal"],
                              cfg.get("log_z_init", "zero"))
                with open(csv_path, "a", newline="") as handle:      # incremental: one cell
                    csv.writer(handle).writerows((name, seed, t, f"{v:.6f}") for t, v in curve)
                print(f"[{key}] {name} seed {seed}: L1 {curve[-1][1]:.4f} "
                      f"({time.time() - cell_start:.0f}s)", file=sys.stderr, flush=True)
            curves.setdefault(name, []).append(curve)

    png_path, md_path = args.out / f"objectives_{key}.png", args.out / f"objectives_{key}.md"
    plot(curves, png_path, threshold, target.name)
    table = report(key, target, cfg, seeds, curves, threshold)
    md_path.write_text(table + "\n")
    print(table)
    print(f"\nwrote {csv_path}, {png_path} and {md_path} ({time.time() - started:.0f}s)", flush=True)


def report(key: str, target, cfg: dict, seeds: int, curves, threshold: float) -> str:
    """Markdown: final L1 (mean ± sd over seeds), steps to threshold, the paper's value."""
    paper = PAPER_TABLE1.get(key)
    initial = statistics.mean(run[0][1] for runs in curves.values() for run in runs)
    lines = [f"Target `{key}` ({target.name}), {seeds} seeds, {cfg['steps']} steps, "
             f"{cfg['samples_per_input']} trajectories per input, Adam lr {cfg['lr']} "
             f"(log Z / flows {cfg['lr_flows']}){', annealed linearly to 0' if cfg['anneal'] else ''}; "
             f"L1 at step 0: {initial:.4f}." + options.header(key, cfg)
             + (f" {target.describe()}." if hasattr(target, "describe") else ""), ""]
    head = f"| objective | final L1 (mean ± sd) | steps to L1 < {threshold} (median; reached) |"
    lines += [head + (" da Silva et al. Table 1 |" if paper else ""),
              "|---|---|---|" + ("---|" if paper else "")]
    for name, runs in curves.items():
        finals = [run[-1][1] for run in runs]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        hits = [first_below(run, threshold) for run in runs]
        reached = [h for h in hits if h is not None]
        median = f"{statistics.median(reached):.0f}" if reached else "—"
        row = f"| {name} | {statistics.mean(finals):.4f} ± {sd:.4f} | {median} ({len(reached)}/{len(runs)}) |"
        if paper:
            row += (" {:.2f} ± {:.2f} |".format(*paper[name]) if name in paper else " — |")
        lines.append(row)
    return "\n".join(lines)


def plot(curves, path: Path, threshold: float, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        steps = [step for step, _ in runs[0]]
        mean = [statistics.mean(run[i][1] for run in runs) for i in range(len(steps))]
        ax.plot(steps, mean, label=name, linestyle="--" if name in ("tb", "subtb", "db", "vargrad") else "-")
    ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_xlabel("training steps")
    ax.set_ylabel("L1(sampler, R/Z), mean over seeds")
    ax.set_title(f"GFlowNet objectives on `{title}`")
    ax.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
