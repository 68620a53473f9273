"""Benchmark our inside algorithm against torch-struct's `SentCFG` (forward + backward).

Neural-PCFG size (NT=30, T=60, batch 32, one shared grammar `expand`ed over the batch,
emissions gathered from a (T, V=10000) table), float32, sentence lengths 20 and 40. Both
implementations run the same pipeline: build the log-probabilities from logits, log Z,
sum().backward() to the logits. Never a timed test: it prints numbers.

Method
* Time: ours and torch-struct in the same worker process (so same machine state): ours with
  one warm-up call, then the median (and min) of --repeats calls; torch-struct once (it is
  30-100x slower; at length 40 it needs about 16 GB, so it runs exactly once). Wall time and
  the process's CPU time are both reported: on a shared machine, CPU time (with --threads 1)
  is the robust figure, since OpenMP threads stall when the cores are oversubscribed.
* Memory: peak resident set size, `resource.getrusage(RUSAGE_SELF).ru_maxrss`, of a fresh
  worker process, minus the same high-water mark taken after imports and input construction
  (tracemalloc cannot see torch's CPU allocations; RSS can). Ours is measured in a worker
  that runs only ours; torch-struct's peak is that of the timing worker, which runs ours first
  and torch-struct second, so its high-water mark is torch-struct's (ours' is far smaller).
* FLOPs: our GEMM/bmm arithmetic (2 per multiply-add) counted from the algorithm's shapes,
  forward and the hand-written backward; elementwise work is not counted. Our rate is
  compared with a 2048³ float32 matmul measured in the same process.

    python3 tests/benchmarks/bench_inside.py [--quick] [--lengths 20 40] [--repeats 5]
        [--batch 32] [--nonterminals 30] [--preterminals 60] [--threads N] [--force]

--quick (or GFNEM_BENCH_QUICK=1) skips torch-struct at lengths above 20. Without --force,
torch-struct at length ≥ 40 is skipped when less than 20 GiB of memory is available.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TS_BIG_LENGTH = 40          # torch-struct at this length or more needs ~16 GB
TS_MEM_NEEDED_GIB = 18


# --- worker side ------------------------------------------------------------------------

def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def make_logits(B, n, NT, T, V=10_000, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    S = NT + T
    rule_logits = torch.randn(NT, S * S, generator=g).requires_grad_()
    emit_logits = torch.randn(T, V, generator=g).requires_grad_()
    root_logits = torch.randn(NT, generator=g).requires_grad_()
    ids = torch.randint(V, (B, n), generator=g)
    return rule_logits, emit_logits, root_logits, ids


def build_params(logits, n, NT, T):
    """The neural PCFG's layout: one grammar expanded over the batch, emissions gathered."""
    import torch
    from grammars.charts.pcfg_params import PCFGParams
    rule_logits, emit_logits, root_logits, ids = logits
    B, S = ids.shape[0], NT + T
    rules = rule_logits.log_softmax(-1).view(NT, S, S).expand(B, NT, S, S)
    terms = emit_logits.log_softmax(-1).t()[ids]                       # (B, n, T)
    roots = root_logits.log_softmax(-1).expand(B, NT)
    return PCFGParams(roots, rules, terms, torch.full((B,), n, dtype=torch.long))


def run_once(impl, logits, n, NT, T) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one forward + backward."""
    for x in logits[:3]:
        x.grad = None
    start, cpu = time.perf_counter(), time.process_time()
    impl(build_params(logits, n, NT, T)).sum().backward()
    return time.perf_counter() - start, time.process_time() - cpu


def matmul_gflops(size=2048, repeats=3) -> float:
    import torch
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def our_flops(B, n, NT, T) -> tuple[float, float]:
    """(forward, backward) GEMM/bmm FLOPs of `grammars.charts.inside` at these sizes."""
    fwd = 2 * B * n * T * (2 * NT * NT + NT * T)                  # leaf tables U, V, W
    fwd += 2 * B * (n - 1) * NT * T                                # width 2: T·T
    bwd = 2 * fwd                                                  # leaf grads: d et, d rules
    bwd += 2 * B * (n - 1) * NT * T                                # width 2: d et
    bwd += 2 * (2 * n * B * NT * NT * (n + 1))                     # dU, dV as one bmm each
    for w in range(3, n + 1):
        Pw, K = n - w + 1, max(w - 3, 0)
        fwd += 2 * 2 * B * Pw * NT * NT                            # T·NT and NT·T matvecs
        bwd += 2 * 2 * B * Pw * NT * NT
        if K:
            fwd += 2 * B * Pw * K * NT * NT + 2 * B * Pw * NT ** 3  # Σ_k outer, NT·NT rules
            bwd += 3 * 2 * B * Pw * K * NT * NT + 2 * 2 * B * Pw * NT ** 3
    return float(fwd), float(bwd)


def worker(args) -> dict:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from grammars.charts import inside
    n, NT, T, B = args.length, args.nonterminals, args.preterminals, args.batch
    out = {"length": n, "threads": torch.get_num_threads(), "mode": args.worker}
    logits = make_logits(B, n, NT, T)
    if args.worker == "time":
        out["matmul_gflops"] = matmul_gflops()
    out["rss_setup_mib"] = max_rss_mib()
    run_once(inside.log_partition, logits, n, NT, T)                    # warm-up
    runs = [run_once(inside.log_partition, logits, n, NT, T) for _ in range(args.repeats)]
    out["ours_s"] = statistics.median(r[0] for r in runs)
    out["ours_min_s"] = min(r[0] for r in runs)
    out["ours_cpu_s"] = statistics.median(r[1] for r in runs)
    out["ours_rss_peak_mib"] = max_rss_mib()
    fwd, bwd = our_flops(B, n, NT, T)
    out["ours_gflop"] = (fwd + bwd) / 1e9
    if args.worker == "time" and not args.skip_torch_struct:
        from grammars.charts import inside_torch_struct
        import warnings
        warnings.filterwarnings("ignore", message=".*arg_constraints.*")
        out["ts_rss_before_mib"] = max_rss_mib()
        out["ts_s"], out["ts_cpu_s"] = run_once(inside_torch_struct.log_partition, logits, n,
                                                NT, T)
        out["ts_rss_peak_mib"] = max_rss_mib()
    return out


# --- driver side ------------------------------------------------------------------------

def available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 2 ** 20
    except (OSError, KeyError, ValueError):
        return float("inf")


def spawn(args, mode: str, length: int, skip_ts: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--length", str(length),
           "--repeats", str(args.repeats), "--batch", str(args.batch),
           "--nonterminals", str(args.nonterminals), "--preterminals", str(args.preterminals)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if skip_ts:
        cmd.append("--skip-torch-struct")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"worker {mode} n={length} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[20, 40])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--nonterminals", type=int, default=30)
    p.add_argument("--preterminals", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in workers")
    p.add_argument("--quick", action="store_true", help="skip torch-struct above length 20")
    p.add_argument("--force", action="store_true", help="run torch-struct at length ≥ 40 "
                   "even with little free memory")
    p.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--skip-torch-struct", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    quick = args.quick or os.environ.get("GFNEM_BENCH_QUICK") == "1"
    print(f"inside benchmark: NT={args.nonterminals} T={args.preterminals} batch={args.batch} "
          f"float32, forward+backward; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    rows = []
    for n in args.lengths:
        skip_ts, why = False, ""
        if quick and n > 20:
            skip_ts, why = True, "--quick"
        elif n >= TS_BIG_LENGTH and not args.force and available_gib() < TS_MEM_NEEDED_GIB:
            skip_ts, why = True, f"only {available_gib():.1f} GiB available (--force to run)"
        timing = spawn(args, "time", n, skip_ts)
        memory = spawn(args, "memory", n, True)
        row = {**timing, "ours_rss_peak_mib": memory["ours_rss_peak_mib"],
               "ours_rss_setup_mib": memory["rss_setup_mib"], "ts_skipped": why}
        rows.append(row)
        report(row, args)
    print(json.dumps({"bench": "inside", "rows": rows}))
    return 0


def report(r: dict, args) -> None:
    ours_mem = r["ours_rss_peak_mib"] - r["ours_rss_setup_mib"]
    rate = r["ours_gflop"] / r["ours_s"]
    print(f"\nlength {r['length']} ({r['threads']} threads)")
    print(f"  ours         {r['ours_s']:8.3f} s median of {args.repeats} "
          f"(min {r['ours_min_s']:.3f}, "
          f"CPU {r['ours_cpu_s']:.3f} s)   peak RSS {r['ours_rss_peak_mib']:6.0f} MiB "
          f"(+{ours_mem:.0f} over setup)")
    print(f"  ours FLOPs   {r['ours_gflop']:8.2f} GFLOP fwd+bwd -> {rate:.1f} GFLOP/s = "
          f"{100 * rate / r['matmul_gflops']:.0f}% of a 2048³ matmul ({r['matmul_gflops']:.0f} "
          f"GFLOP/s here)")
    if "ts_s" not in r:
        print(f"  torch-struct skipped: {r['ts_skipped'] or 'not run'}")
        return
    ts_mem = r["ts_rss_peak_mib"] - r["ts_rss_before_mib"]
    print(f"  torch-struct {r['ts_s']:8.3f} s (one run, CPU {r['ts_cpu_s']:.3f} s)"
          f"          peak RSS {r['ts_rss_peak_mib']:6.0f} MiB (+{ts_mem:.0f} over its start)")
    print(f"  speed-up {r['ts_s'] / r['ours_s']:.1f}x wall, {r['ts_cpu_s'] / r['ours_cpu_s']:.1f}x "
          f"CPU (target ≥ 20x); peak RSS ratio "
          f"ours/torch-struct {r['ours_rss_peak_mib'] / r['ts_rss_peak_mib']:.3f} absolute, "
          f"{ours_mem / max(ts_mem, 1e-9):.4f} above baseline (target ≤ 0.25)")


if __name__ == "__main__":
    sys.exit(main())
