"""What the fixed-shape `forest_node_terms` costs against the version that selected each rule
kind's nodes by `nonzero` (issue 14): the dense one computes every kind, the T x T leaf-pair
block included, for every slot, and in exchange never makes a GPU wait for a count.

Same process, interleaved (`harness.interleaved`), one thread by default, on random forests
of random lengths 2..20 (the recipes' max_train_length) with the PTB recipes' grammar sizes
(30 nonterminals, 60 preterminals):
  complete-npcfg  32 complete trees, shared grammar, forward + backward (the M-step's scores)
  complete-ncfg   the same, parent-conditioned rules and emissions (the NCFG)
  states-npcfg    32 x 18 partial forests, half of each tree's merges, no grad (SubTB's flows)
  complete-tree   `tree_log_prob` (the neural PCFG's score of complete trees) against its
                  version with `nonzero` (tests/grammars/test_tree_score_dense.py): 32 trees,
                  shared grammar, forward + backward through roots, rules and emissions

    python tests/benchmarks/bench_forest_terms.py [--repeats 10] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_thread_env(harness.threads_from_argv())
for extra in (harness.REPO, harness.REPO / "tests" / "grammars"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import torch  # noqa: E402

from grammars.models.forest_score import forest_node_terms  # noqa: E402
from grammars.charts.tree_score import tree_log_prob  # noqa: E402
from test_forest_terms_dense import random_inputs, selected_node_terms  # noqa: E402
import test_tree_score_dense as tree_dense  # noqa: E402

# name: (rows, keep, parent_conditioned, backward)
CASES = {"complete-npcfg": (32, 1.0, False, True), "complete-ncfg": (32, 1.0, True, True),
         "states-npcfg": (32 * 18, 0.5, False, False), "complete-tree": (32, 1.0, False, True)}
SIZES = {"nt": 30, "t": 60, "v": 1000}
QUICK = {"nt": 4, "t": 6, "v": 50}


def candidate(fn, args, parent_conditioned: bool, backward: bool):
    """One call of `fn` on `args` (and its backward through the rule and emission tables)."""
    def call():
        if backward:
            terms = fn(*args, parent_conditioned)
            terms = terms[0] if isinstance(terms, tuple) else terms
            torch.autograd.grad(terms.sum(), args[4:6])
        else:
            with torch.no_grad():
                fn(*args, parent_conditioned)
    return call


def tree_candidate(fn, lengths, sizes):
    """One call of the complete-tree scorer `fn` and its backward through the leaf tables."""
    params, trees, tables = tree_dense.random_inputs(lengths, sizes["nt"], sizes["t"], 0, True,
                                                    torch.float32, 0)

    def call():
        torch.autograd.grad(fn(params, trees).sum(), tables)
    return call


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=harness.thread_count, default=harness.default_threads())
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    quick = harness.quick_mode(args.quick)
    sizes = QUICK if quick else SIZES
    threads = harness.pin_threads(args.threads)
    for name, (rows, keep, conditioned, backward) in CASES.items():
        rows = 4 if quick else rows
        rng = random.Random(0)
        lengths = [rng.randint(2, 20) for _ in range(rows)]
        if name == "complete-tree":
            fns = {"dense": tree_candidate(tree_log_prob, lengths, sizes),
                   "selected": tree_candidate(tree_dense.selected_tree_log_prob, lengths, sizes)}
        else:
            _, inputs = random_inputs(lengths, sizes["nt"], sizes["t"], sizes["v"], keep,
                                      conditioned, False, torch.float32, 0)
            fns = {"dense": candidate(forest_node_terms, inputs, conditioned, backward),
                   "selected": candidate(selected_node_terms, inputs, conditioned, backward)}
        out = harness.interleaved(fns, repeats=3 if quick else args.repeats, label=name)
        ratio = harness.ratio(out["stats"], slow="dense", fast="selected")
        row = {"bench": "forest_terms", "case": name, "rows": rows, **sizes, **threads,
               "dense_median_s": out["stats"]["dense"]["median_s"],
               "selected_median_s": out["stats"]["selected"]["median_s"],
               "dense_over_selected_median": ratio["speedup_median"],
               "dense_over_selected_min": ratio["speedup_min"], "quick": quick, **out}
        harness.emit(row)
        print(f"{name:15s} dense {row['dense_median_s'] * 1e3:8.2f} ms  selected "
              f"{row['selected_median_s'] * 1e3:8.2f} ms  dense/selected "
              f"{row['dense_over_selected_median']:.2f} (min {ratio['speedup_min']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
