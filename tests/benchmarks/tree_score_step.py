"""What the fixed-shape `tree_log_prob` costs a whole GFlowNet-EM step (issue 14): the calls
one real step makes, recorded, then replayed with it and with the version that picked each
rule case's nodes by `nonzero` (tests/grammars/test_tree_score_dense.py), interleaved.

`gfnem train RECIPE` runs in-process (default: the PTB neural-PCFG GFlowNet-EM recipe, the
M-step forced every step by `em.threshold_*=1e9`); from the second step on, each step's wall
time and its `tree_log_prob` calls (inputs copied, and whether the call was differentiated)
are kept. Each replay runs a step's calls, forward and, where the step differentiated them,
backward through roots, rules and emissions. Reported: both versions' time per step, their
ratio, and the difference as a share of the measured step. Not a `bench_*.py`: it needs a
corpus (`run_all.py` runs every benchmark without arguments).

    python tests/benchmarks/tree_score_step.py --set data.path=DIR [--set k=v ...]
        [--recipe RECIPE] [--steps 3] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_thread_env(harness.threads_from_argv())
for extra in (harness.REPO, harness.REPO / "tests" / "grammars"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import torch  # noqa: E402

from grammars.charts.pcfg_params import PCFGParams  # noqa: E402
from grammars.charts.tree_score import tree_log_prob  # noqa: E402
from test_tree_score_dense import selected_tree_log_prob  # noqa: E402

FORCED = ["em.threshold_max=1e9", "em.threshold_min=1e9", "train.eval_every=100000"]


def _leaf(x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(a detached copy laid out as `x`, shared rows kept shared; the leaf to differentiate)."""
    leaf = (x[:1] if x.stride(0) == 0 else x).detach().clone().requires_grad_(grad)
    return leaf.expand_as(x), leaf


def record(recipe: Path, sets: list[str], steps: int):
    """(wall seconds of each step from the second on, the `tree_log_prob` calls of each)."""
    from typer.testing import CliRunner

    from gfnem_cli.app import app
    from gfnem_cli.engine import trainer as trainer_module
    import grammars.models.npcfg as npcfg

    walls, calls, state = [], [], {"on": False, "steps": 0}
    real_init, real_score = trainer_module.Trainer.__init__, npcfg.tree_log_prob

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real_step = self.method.train_step

        def timed(batch):
            state["steps"] += 1
            if state["steps"] < 2:                       # the first step builds state
                return real_step(batch)
            calls.append([])
            state["on"], start = True, time.perf_counter()
            try:
                return real_step(batch)
            finally:
                walls.append(time.perf_counter() - start)
                state["on"] = False
        self.method.train_step = timed

    def recording(params: PCFGParams, trees):
        if state["on"]:
            grad = torch.is_grad_enabled() and params.rules.requires_grad
            calls[-1].append((params, trees, grad))
        return real_score(params, trees)

    out = Path(tempfile.mkdtemp(prefix="tree-score-step-"))
    trainer_module.Trainer.__init__, npcfg.tree_log_prob = init, recording
    try:
        done = CliRunner().invoke(app, ["train", str(recipe), "--out", str(out / "run"), "-q",
                                        "--device", "cpu", "--set", f"train.steps={steps}",
                                        *sum((["--set", s] for s in FORCED + sets), [])],
                                  catch_exceptions=False)
    finally:
        trainer_module.Trainer.__init__, npcfg.tree_log_prob = real_init, real_score
        shutil.rmtree(out, ignore_errors=True)
    if done.exit_code != 0:
        raise SystemExit(f"`gfnem train` refused: {done.output.strip()}")
    return walls, [[_copied(*c) for c in step] for step in calls]


def _copied(params: PCFGParams, trees, grad: bool):
    """A call's inputs, detached from the step's graph: (params, trees, leaves or None)."""
    (roots, r), (rules, q), (terms, t) = (_leaf(x, grad) for x in
                                          (params.roots, params.rules, params.terms))
    return (PCFGParams(roots, rules, terms, params.lengths.clone()), trees,
            (r, q, t) if grad else None)


def replay(fn, step_calls):
    """One step's calls of `fn`, each with its backward when the step made one."""
    def run():
        for params, trees, leaves in step_calls:
            if leaves is None:
                with torch.no_grad():
                    fn(params, trees)
            else:
                torch.autograd.grad(fn(params, trees).sum(), leaves)
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", type=Path, default=harness.REPO / "recipes" / "ptb-npcfg-gfnem.yaml")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=harness.thread_count, default=harness.default_threads())
    args = p.parse_args(argv)
    threads = harness.pin_threads(args.threads)
    walls, calls = record(args.recipe.resolve(), args.set, args.steps)
    for s, (wall, step_calls) in enumerate(zip(walls, calls)):
        fns = {"dense": replay(tree_log_prob, step_calls),
               "selected": replay(selected_tree_log_prob, step_calls)}
        out = harness.interleaved(fns, repeats=args.repeats, label=f"step {s}")
        dense, sel = (out["stats"][k]["median_s"] for k in ("dense", "selected"))
        harness.emit({"bench": "tree_score_step", "step": s, "step_s": wall,
                      "calls": len(step_calls), "rows": [c[0].terms.shape[0] for c in step_calls],
                      "dense_median_s": dense, "selected_median_s": sel,
                      "dense_over_selected_median": dense / sel,
                      "share_of_step": (dense - sel) / wall, **threads, **out})
        print(f"step {s}: {wall:7.2f} s, {len(step_calls)} calls: dense {dense * 1e3:7.2f} ms, "
              f"selected {sel * 1e3:7.2f} ms, ratio {dense / sel:.2f}, "
              f"difference {100 * (dense - sel) / wall:+.2f}% of the step")
    print(f"median step {statistics.median(walls):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
