"""Benchmark our inside algorithm against torch-struct's `SentCFG` (forward + backward).

Neural-PCFG size (NT=30, T=60, batch 32, one shared grammar `expand`ed over the batch,
emissions gathered from a (T, V=10000) table), float32, sentence lengths 20 and 40. Both
implementations run the same pipeline: build the log-probabilities from logits, log Z,
sum().backward() to the logits. Never a timed test: it prints numbers.

Method (the shared protocol of `harness.py`)
* Threads: every worker is a fresh subprocess started with OMP/MKL/OpenBLAS thread variables
  set to --threads (default 1) before torch loads, plus torch intra- and inter-op threads.
* Time: in one worker per length, ours, torch-struct and a 2048³ float32 matmul (the rate
  our FLOPs are compared with) each get one warm-up call, then --repeats (≥ 3) rounds,
  interleaved; a candidate faster than --min-round-s (default 1 s) is called again within
  its turn until the turn lasts that long and counts the median of those calls (ours: ~20
  calls a round at length 20). Median and min of wall time (and process CPU time) for each.
  The speed-up headline is paired: the median over rounds of torch-struct's turn over ours
  in the same round (the ratio of medians, of minima and of CPU medians beside it). --against REV adds our inside.py as of git
  revision REV as a fourth candidate (before/after of a change, same process).
* Load: os.getloadavg() before and after each worker's timings; a warning when above the
  cores in use.
* Memory: peak RSS (`ru_maxrss`) of a fresh worker that runs only ours, minus its high-water
  mark after set-up; torch-struct's is that of the timing worker (it dominates the peak).
* Allocator: our passes set glibc's mmap/trim thresholds once (grammars/charts/allocator.py),
  process-wide, so every candidate of a worker runs under them; GFNEM_MALLOC_TUNING=0 in the
  environment measures glibc's defaults (the row's `malloc_retained` says which).
* FLOPs: our GEMM/bmm arithmetic (2 per multiply-add) counted from the algorithm's shapes,
  forward and the hand-written backward; elementwise work is not counted.

    python3 tests/benchmarks/bench_inside.py [--quick] [--lengths 20 40] [--repeats 3] [--min-round-s 1]
        [--batch 32] [--nonterminals 30] [--preterminals 60] [--threads 1] [--force]
        [--against REV] [--no-torch-struct] [--decoders] [--zipf S] [--json rows.jsonl]

--quick (or GFNEM_BENCH_QUICK=1): length 8, batch 8, 3 repeats, seconds in all. Without
--force, torch-struct at length ≥ 40 is skipped when less than 18 GiB of memory is available.
"""
from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (before torch: the worker pins its threads first)

REPO = harness.REPO
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TS_BIG_LENGTH = 40          # torch-struct at this length or more needs ~16 GB
TS_MEM_NEEDED_GIB = 18
QUICK = dict(lengths=[8], batch=8, repeats=3, min_round_s=0.05)


# --- worker side ------------------------------------------------------------------------

def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def make_logits(B, n, NT, T, V=10_000, seed=0, zipf=None):
    """Random logits; word ids uniform over V, or Zipfian (p ∝ rank^-zipf) like real text."""
    import torch
    g = torch.Generator().manual_seed(seed)
    S = NT + T
    rule_logits = torch.randn(NT, S * S, generator=g).requires_grad_()
    emit_logits = torch.randn(T, V, generator=g).requires_grad_()
    root_logits = torch.randn(NT, generator=g).requires_grad_()
    if zipf:
        p = torch.arange(1, V + 1, dtype=torch.float64) ** -zipf
        ids = torch.multinomial(p, B * n, replacement=True, generator=g).view(B, n)
    else:
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


def pipeline(impl, logits, n, NT, T):
    def run():
        for x in logits[:3]:
            x.grad = None
        impl(build_params(logits, n, NT, T)).sum().backward()
    return run


def matmul_call(size=2048):
    import torch
    a, b = torch.randn(size, size), torch.randn(size, size)
    return lambda: a @ b


def inside_at(rev: str):
    """grammars/charts/inside.py as of git revision `rev`, with the chart files it imports from
    that revision too: grammars/charts/ is written to a temporary package whose files'
    `grammars.charts.` imports are renamed to it, so old and new code share one process."""
    import re
    import tempfile
    pkg = "charts_at_" + re.sub(r"\W", "_", rev)
    if pkg + ".inside" in sys.modules:
        return sys.modules[pkg + ".inside"]
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "grammars/charts/"], cwd=REPO,
                           text=True, capture_output=True, check=True).stdout.split()
    root = Path(tempfile.mkdtemp(prefix="gfnem-rev-"))
    (root / pkg).mkdir()
    for name in names:
        if name.endswith(".py"):
            src = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=REPO, text=True,
                                 capture_output=True, check=True).stdout
            (root / pkg / Path(name).name).write_text(src.replace("grammars.charts.", pkg + "."))
    sys.path.insert(0, str(root))
    return importlib.import_module(pkg + ".inside")


def decoder_calls(logits, n, NT, T, against=None) -> dict:
    """Viterbi and 8 exact posterior samples per sentence on the same grammar, gradient-free
    (what validation F1, `gfnem parse` and `gfnem sample` run); also at --against REV."""
    import torch
    from grammars.charts import posterior_sampling, viterbi
    with torch.no_grad():
        params = build_params(logits, n, NT, T)
    mods = {"": (viterbi, posterior_sampling)}
    if against:
        pkg = inside_at(against).__name__.rsplit(".", 1)[0]
        mods["@" + against] = (importlib.import_module(pkg + ".viterbi"),
                               importlib.import_module(pkg + ".posterior_sampling"))
    calls = {}
    for tag, (v, ps) in mods.items():
        calls["viterbi" + tag] = lambda v=v: v.viterbi(params)
        calls["sample8" + tag] = lambda ps=ps: ps.sample_posterior(
            params, 8, torch.Generator().manual_seed(0))
    return calls


def our_flops(B, n, NT, T) -> tuple[float, float]:
    """(forward, backward) GEMM/bmm FLOPs of `grammars.charts.inside` at these sizes."""
    from grammars.charts.scaled_chart import leaf_blocks
    fwd = 2 * B * n * T * (2 * NT * NT + NT * T)                  # leaf tables U, V, W
    fwd += 2 * B * (n - 1) * NT * T                                # width 2: T·T
    bwd = 2 * fwd                                                  # leaf grads: d et, d rules
    bwd += 2 * B * (n - 1) * NT * T                                # width 2: d et
    for left in (True, False):                                     # dU, dV: bmm per block
        bwd += sum(2 * (i1 - i0) * B * NT * NT * max(hi - 3, 0)
                   for i0, i1, hi in leaf_blocks(n, left))
    for w in range(3, n + 1):
        Pw, K = n - w + 1, max(w - 3, 0)
        fwd += 2 * 2 * B * Pw * NT * NT                            # T·NT and NT·T matvecs
        bwd += 2 * 2 * B * Pw * NT * NT
        if K:
            fwd += 2 * B * Pw * K * NT * NT + 2 * B * Pw * NT ** 3  # Σ_k outer, NT·NT rules
            bwd += 2 * 2 * B * Pw * K * NT * NT + 2 * 2 * B * Pw * NT ** 3   # X kept
    return float(fwd), float(bwd)


def worker(args) -> dict:
    threads = harness.pin_threads(args.threads)
    from grammars.charts import inside
    from grammars.charts.allocator import retain_freed_memory
    n, NT, T, B = args.length, args.nonterminals, args.preterminals, args.batch
    out = {"length": n, "batch": B, "nonterminals": NT, "preterminals": T, "mode": args.worker,
           **threads}
    logits = make_logits(B, n, NT, T, zipf=args.zipf)
    out["rss_setup_mib"] = max_rss_mib()
    if args.worker == "memory":
        run = pipeline(inside.log_partition, logits, n, NT, T)
        run()
        out["ours_rss_peak_mib"] = max_rss_mib()
        return out
    fns = {"ours": pipeline(inside.log_partition, logits, n, NT, T)}
    if args.against:
        fns[f"ours@{args.against}"] = pipeline(inside_at(args.against).log_partition, logits,
                                               n, NT, T)
    if not args.skip_torch_struct:
        import warnings
        warnings.filterwarnings("ignore", message=".*arg_constraints.*")
        from grammars.charts import inside_torch_struct
        fns["torch-struct"] = pipeline(inside_torch_struct.log_partition, logits, n, NT, T)
    if args.decoders:
        fns.update(decoder_calls(logits, n, NT, T, args.against))
    fns["matmul2048"] = matmul_call()
    timing = harness.interleaved(fns, args.repeats, warmup=1, cores_in_use=args.threads,
                                 label=f"length {n}", min_round_s=args.min_round_s)
    out.update(timing)
    out["ts_rss_peak_mib"] = max_rss_mib()
    fwd, bwd = our_flops(B, n, NT, T)
    out["ours_gflop"] = (fwd + bwd) / 1e9
    out["malloc_retained"] = retain_freed_memory()
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
           "--repeats", str(args.repeats), "--min-round-s", str(args.min_round_s),
           "--batch", str(args.batch), "--threads",
           str(args.threads), "--nonterminals", str(args.nonterminals),
           "--preterminals", str(args.preterminals)]
    if skip_ts:
        cmd.append("--skip-torch-struct")
    if args.against and mode == "time":
        cmd += ["--against", args.against]
    if args.decoders and mode == "time":
        cmd.append("--decoders")
    if args.zipf:
        cmd += ["--zipf", str(args.zipf)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env=harness.worker_env(args.threads))
    if done.returncode != 0:
        raise RuntimeError(f"worker {mode} n={length} failed:\n{done.stderr}")
    sys.stdout.write(done.stdout.rsplit("\n", 2)[0] + "\n" if done.stdout.count("\n") > 1
                     else "")
    return json.loads(done.stdout.strip().splitlines()[-1])


def derive(row: dict) -> dict:
    st = row["stats"]
    mm = 2 * 2048 ** 3 / 1e9
    row["matmul_gflops_median"] = mm / st["matmul2048"]["median_s"]
    row["matmul_gflops_best"] = mm / st["matmul2048"]["min_s"]
    for name in [k for k in st if k.startswith("ours")]:
        rate = row["ours_gflop"] / st[name]["median_s"]
        row[f"{name}_gflops_median"] = rate
        row[f"{name}_share_of_matmul_median"] = rate / row["matmul_gflops_median"]
        row[f"{name}_share_of_matmul_best"] = (row["ours_gflop"] / st[name]["min_s"]
                                               / row["matmul_gflops_best"])
    if "torch-struct" in st:
        row["speedup_vs_torch_struct"] = harness.ratio(st, "torch-struct", "ours")
    if row.get("against"):
        row["speedup_vs_against"] = harness.ratio(st, f"ours@{row['against']}", "ours")
    for name in [k for k in st if k.startswith(("viterbi", "sample8"))]:
        row[f"{name}_over_nll_pass"] = harness.ratio(st, name, "ours")["speedup_median"]
        if "@" in name:
            row[f"{name.split('@')[0]}_speedup_vs_against"] = harness.ratio(
                st, name, name.split("@")[0])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[20, 40])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--nonterminals", type=int, default=30)
    p.add_argument("--preterminals", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-round-s", type=float, default=1.0, help="a candidate faster than "
                   "this is called again within its turn of a round until the turn lasts this "
                   "long (its sample: the median of those calls); 0 = one call a turn")
    p.add_argument("--threads", type=harness.thread_count, default=harness.default_threads(), help="every thread pool of the workers")
    p.add_argument("--quick", action="store_true", help="length 8, batch 8: seconds")
    p.add_argument("--force", action="store_true", help="run torch-struct at length ≥ 40 "
                   "even with little free memory")
    p.add_argument("--no-torch-struct", action="store_true")
    p.add_argument("--against", help="also time grammars/charts/inside.py at this git rev")
    p.add_argument("--decoders", action="store_true", help="also time Viterbi and 8 posterior "
                   "samples per sentence (gradient-free) against our NLL pass")
    p.add_argument("--zipf", type=float, help="Zipfian word ids with this exponent (real text "
                   "repeats words; default uniform over 10,000)")
    p.add_argument("--json", help="append the rows to this JSON-lines file")
    p.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--skip-torch-struct", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if harness.quick_mode(args.quick):
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.repeats < harness.MIN_REPEATS:
        p.error(f"--repeats must be at least {harness.MIN_REPEATS}")
    if not args.min_round_s >= 0:
        p.error("--min-round-s must be a number of seconds >= 0")
    print(f"inside benchmark: NT={args.nonterminals} T={args.preterminals} batch={args.batch} "
          f"float32, forward+backward, {args.threads} thread(s), {args.repeats} interleaved "
          f"repeats; load average {harness.load()} on {harness.os.cpu_count()} CPUs", flush=True)
    for n in args.lengths:
        skip_ts, why = args.no_torch_struct, "--no-torch-struct" if args.no_torch_struct else ""
        if not skip_ts and n >= TS_BIG_LENGTH and not args.force \
                and available_gib() < TS_MEM_NEEDED_GIB:
            skip_ts, why = True, f"only {available_gib():.1f} GiB available (--force to run)"
        start = time.perf_counter()
        timing = spawn(args, "time", n, skip_ts)
        memory = spawn(args, "memory", n, True)
        row = derive({"bench": "inside", **timing, "against": args.against,
                      "ours_rss_peak_mib": memory["ours_rss_peak_mib"],
                      "ours_rss_setup_mib": memory["rss_setup_mib"], "ts_skipped": why,
                      "seconds": time.perf_counter() - start})
        report(row)
        harness.emit(row, args.json)
    return 0


def report(r: dict) -> None:
    st = r["stats"]
    print(f"\nlength {r['length']} ({r['intra_op_threads']} intra-op / {r['inter_op_threads']} "
          f"inter-op threads, OMP {r['omp_num_threads']}, MKL {r['mkl_num_threads']}, malloc "
          f"{'retained' if r.get('malloc_retained') else 'glibc defaults'}); load "
          f"{r['load_before']} before, {r['load_after']} after")
    for name, s in st.items():
        print(f"  {name:14s} median {s['median_s']:9.4f} s  min {s['min_s']:9.4f} s  "
              f"CPU median {s['cpu_median_s']:9.4f} s  samples {s['wall_s']}  calls/round "
              f"{s['calls_per_round']}")
    for name in [k for k in st if k.startswith("ours")]:
        print(f"  {name} {r['ours_gflop']:.2f} GFLOP fwd+bwd -> {r[name + '_gflops_median']:.1f}"
              f" GFLOP/s = {100 * r[name + '_share_of_matmul_median']:.0f}% of the 2048³ matmul "
              f"(median {r['matmul_gflops_median']:.0f} GFLOP/s; best/best "
              f"{100 * r[name + '_share_of_matmul_best']:.0f}%)")
    ours_mem = r["ours_rss_peak_mib"] - r["ours_rss_setup_mib"]
    print(f"  ours peak RSS {r['ours_rss_peak_mib']:.0f} MiB (+{ours_mem:.0f} over set-up)")
    if r.get("speedup_vs_against"):
        s = r["speedup_vs_against"]
        print(f"  ours vs ours@{r['against']}: {s['speedup_paired']:.2f}x (paired rounds), "
              f"{s['speedup_median']:.2f}x (medians), {s['speedup_min']:.2f}x (mins)")
    for name in [k for k in st if k.startswith(("viterbi", "sample8"))]:
        line = f"  {name} = {r[name + '_over_nll_pass']:.2f}x our NLL pass (medians)"
        if f"{name}_speedup_vs_against" in r:
            s = r[f"{name}_speedup_vs_against"]
            line += f"; {s['speedup_median']:.2f}x faster than @{r['against']} (mins " \
                f"{s['speedup_min']:.2f}x)"
        print(line)
    if "speedup_vs_torch_struct" not in r:
        print(f"  torch-struct skipped: {r['ts_skipped'] or 'not run'}")
        return
    s = r["speedup_vs_torch_struct"]
    print(f"  torch-struct peak RSS {r['ts_rss_peak_mib']:.0f} MiB (timing worker)")
    print(f"  speed-up over torch-struct {s['speedup_paired']:.1f}x (paired rounds), "
          f"{s['speedup_median']:.1f}x (medians), {s['speedup_min']:.1f}x (mins), "
          f"{s['speedup_cpu_paired']:.1f}x (CPU, paired)")


if __name__ == "__main__":
    sys.exit(main())
