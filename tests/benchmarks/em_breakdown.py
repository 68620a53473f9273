"""Where one GFlowNet-EM iteration's time goes, and against which checkout (issue 15).

`bench_tree_sampler.py --breakdown` builds the loop of a recipe (default: the paper's,
recipes/ptb-npcfg-gfnem.yaml: batch 32, Transformer d=512, 6 layers, 4 heads) on B random
sentences of --length words, runs `EMLoop.train_step` itself and times its phases by wrapping
the family's methods (exclusive times, nested calls subtracted): sampling, the objective's
forward, local search, the loss's backward, sleep (dream, log P_F, backward), M-step draws,
M-step (log p(x, z) and backward), the rest (clipping, optimizer steps). A forward hook on the
encoder counts its matmul FLOPs (linear layers and attention; a call with gradients counts 3x:
the backward pass computes two products per forward one); the floor is those FLOPs at the
GEMM rate this process measures on the same shapes, so `floor_share` = floor / seconds.

`--compare DIR` runs two workers, this checkout and the one in DIR (e.g. today's commit,
`git archive HEAD | tar -x -C /tmp/base`), each pinned to --threads, and alternates their
iterations (E-step-only and M-step, rotated) so that both see the same load; medians and the
ratio per kind come back as one BENCH-ROW. Each worker imports its own checkout (`--code=`).

    python tests/benchmarks/bench_tree_sampler.py --breakdown [--recipe R] [--set k=v]...
        [--kinds e,m] [--repeats 3] [--compare /tmp/base] [--base-recipe R] [--base-set k=v]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness

KINDS = {"e": 0.0, "m": math.inf}     # the M-step threshold: shut (E-step only) or always open


class Phases:
    """Exclusive wall time per phase: a nested phase's time is taken out of its caller's."""

    def __init__(self):
        self.seconds, self.stack, self.last = {}, [], "loss"

    def wrap(self, name, fn, after=None):
        def run(*a, **kw):
            start = time.perf_counter()
            self.stack.append(0.0)
            try:
                return fn(*a, **kw)
            finally:
                inner = self.stack.pop()
                spent = time.perf_counter() - start
                self.seconds[name] = self.seconds.get(name, 0.0) + spent - inner
                if self.stack:
                    self.stack[-1] += spent
                self.last = after or self.last
        return run


def encoder_flops(d: int, ff: int, layers: int, rows: int, width: int) -> float:
    """Matmul FLOPs of one encoder forward over rows x width tokens (summary token included)."""
    tokens = rows * width
    linear = 2 * tokens * (4 * d * d + 2 * d * ff)
    attention = 4 * rows * width * width * d
    return layers * (linear + attention)


def gemm_rate(torch, d: int, ff: int, tokens: int, device) -> float:
    """FLOP/s of the encoder's two GEMM shapes at `tokens` rows, measured here."""
    x = torch.randn(tokens, d, device=device)
    w1, w2 = torch.randn(d, ff, device=device), torch.randn(ff, d, device=device)
    for _ in range(3):
        (x @ w1) @ w2
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            (x @ w1) @ w2
        best = min(best, (time.perf_counter() - start) / 10)
    return 4 * tokens * d * ff / best


def build(args):
    """The recipe's EMLoop at the benchmark's size, and one batch of random sentences."""
    import torch
    from gfnem_cli.engine.config import resolve_config
    from grammars.data.batching import make_batch
    from grammars.recipe import GRAMMAR
    from grammars.run import build_model, inside_backend
    from grammars.training.em_methods import build_em_method
    config = resolve_config(GRAMMAR, Path(args.recipe), args.set or [])
    torch.manual_seed(config["train"]["seed"])
    model = build_model(config, args.vocab)
    loop = build_em_method(config, model, [], torch.device("cpu"),
                           inside_backend(config["inside"]))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, args.vocab, (args.batch, args.length), generator=g)
    return config, loop, make_batch(ids.tolist(), list(range(args.batch)))


def instrument(loop, phases: Phases, calls: list):
    import torch
    fam, est = loop.family, loop.estep
    fam.sample = phases.wrap("sample", fam.sample)
    refine = fam.refine
    fam.refine = lambda *a, **kw: phases.wrap(
        "local_search" if a[4] else "mstep_draws", refine)(*a, **kw)
    fam.dream = phases.wrap("sleep", fam.dream, "sleep")
    fam.log_pf_of = phases.wrap("sleep", fam.log_pf_of, "sleep")
    est.objective = phases.wrap("loss_forward", est.objective, "loss")
    est.draw = phases.wrap("mstep_draws", est.draw, "mstep")
    for name in ("log_joint", "mstep_log_likelihood"):
        if hasattr(fam, name):
            setattr(fam, name, phases.wrap("mstep", getattr(fam, name), "mstep"))
    backward = torch.Tensor.backward

    def timed_backward(self, *a, **kw):
        name = {"loss": "loss_backward"}.get(phases.last, phases.last)
        return phases.wrap(name, backward)(self, *a, **kw)
    torch.Tensor.backward = timed_backward
    fam.sampler.encoder.register_forward_hook(
        lambda mod, inp, out: calls.append((inp[0].shape[0], inp[0].shape[1] + 1,
                                            torch.is_grad_enabled())))


def worker(args) -> None:
    """Serve iterations: read a kind per line, answer one JSON line of phase seconds."""
    import torch
    from gfnem_cli.engine.schedules import ThresholdSchedule
    harness.pin_threads(args.threads)
    config, loop, batch = build(args)
    s = config["sampler"]
    d, layers = s["d_model"], s["num_layers"]
    ff = s["dim_feedforward"] or 4 * d
    rate = gemm_rate(torch, d, ff, args.batch * (args.length // 2 + 1), "cpu")
    print(json.dumps({"ready": True, "gemm_gflops": rate / 1e9}), flush=True)
    phases, calls = Phases(), []
    instrument(loop, phases, calls)
    for line in sys.stdin:
        kind = line.strip()
        tau = KINDS[kind]
        loop.options.threshold = ThresholdSchedule(tau, tau, 0)
        phases.seconds, phases.last = {}, "loss"
        calls.clear()
        rate = gemm_rate(torch, d, ff, args.batch * (args.length // 2 + 1), "cpu")  # same load
        start = time.perf_counter()
        metrics = loop.train_step(batch)
        total = time.perf_counter() - start
        flops = sum(encoder_flops(d, ff, layers, m, w) * (3 if g else 1) for m, w, g in calls)
        phases.seconds["rest"] = total - sum(phases.seconds.values())
        print(json.dumps({"kind": kind, "seconds": total, "phases": phases.seconds,
                          "mstep": metrics["mstep"], "encoder_calls": len(calls),
                          "encoded_roots": sum(m * w for m, w, _ in calls),
                          "encoder_gflop": flops / 1e9, "floor_seconds": flops / rate,
                          "floor_share": flops / rate / total, "gemm_gflops": rate / 1e9}),
              flush=True)


def spawn(code: Path, recipe: str, sets: list[str], args) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).with_name("bench_tree_sampler.py")),
           f"--code={code}", "--worker", "--recipe", recipe, "--threads", str(args.threads),
           "--batch", str(args.batch), "--length", str(args.length), "--vocab", str(args.vocab)]
    for item in sets:
        cmd += ["--set", item]
    env = harness.worker_env(args.threads)
    env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, cwd=str(code))
    json.loads(proc.stdout.readline())
    return proc


def ask(proc, kind: str) -> dict:
    proc.stdin.write(kind + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", default=str(harness.REPO))
    p.add_argument("--breakdown", action="store_true")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--recipe", default=None)
    p.add_argument("--set", action="append")
    p.add_argument("--compare", help="another checkout to time against, alternately")
    p.add_argument("--base-recipe", default=None)
    p.add_argument("--base-set", action="append")
    p.add_argument("--kinds", default="e,m")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=harness.thread_count, default=harness.default_threads())
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--json")
    args = p.parse_args(argv)
    code = Path(args.code).resolve()
    args.recipe = args.recipe or str(code / "recipes" / "ptb-npcfg-gfnem.yaml")
    if args.worker:
        return worker(args)
    workers = {"ours": spawn(code, args.recipe, args.set or [], args)}
    if args.compare:
        base = Path(args.compare).resolve()
        workers["base"] = spawn(base, args.base_recipe or str(base / "recipes" /
                                                             "ptb-npcfg-gfnem.yaml"),
                                args.base_set or [], args)
    kinds = args.kinds.split(",")
    before = harness.load()
    samples = {(w, k): [] for w in workers for k in kinds}
    names = list(workers)
    for r in range(-args.warmup, args.repeats):
        for w in names[r % len(names):] + names[:r % len(names)]:
            for k in kinds:
                out = ask(workers[w], k)
                if r >= 0:
                    samples[(w, k)].append(out)
    after = harness.load()
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    row = {"bench": "em_breakdown", "load_before": before, "load_after": after,
           "repeats": args.repeats, "batch": args.batch, "length": args.length,
           "threads": args.threads, "recipe": args.recipe, "set": args.set,
           "compare": args.compare, "base_set": args.base_set, "results": {}}
    for (w, k), outs in samples.items():
        med = statistics.median(o["seconds"] for o in outs)
        phases = {n: statistics.median(o["phases"].get(n, 0.0) for o in outs)
                  for n in outs[0]["phases"]}
        row["results"][f"{w}/{k}"] = {
            "median_s": med, "samples_s": [round(o["seconds"], 3) for o in outs],
            "phases_s": {n: round(v, 3) for n, v in phases.items()},
            "encoded_roots": outs[-1]["encoded_roots"], "encoder_calls": outs[-1]["encoder_calls"],
            "floor_share": statistics.median(o["floor_share"] for o in outs)}
        print(f"{w:5s} {k}: {med:8.3f} s  floor share {row['results'][f'{w}/{k}']['floor_share']:.2f}"
              f"  roots {outs[-1]['encoded_roots']}  " +
              "  ".join(f"{n} {v:.2f}" for n, v in phases.items()))
    if args.compare:
        row["speedup"] = {k: row["results"][f"base/{k}"]["median_s"]
                          / row["results"][f"ours/{k}"]["median_s"] for k in kinds}
        print("speed-up (base / ours, medians):", row["speedup"])
    for warning in (harness.load_warning(before, args.threads, "before"),
                    harness.load_warning(after, args.threads, "after")):
        row.setdefault("load_warnings", []).append(warning) if warning else None
    harness.emit(row, args.json)
    return [row]
