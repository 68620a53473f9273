"""The timing protocol every benchmark in this folder shares (issue 17).

1. Threads are the benchmark's, not the environment's: `pin_threads(n)` sets OMP_NUM_THREADS,
   MKL_NUM_THREADS, OPENBLAS_NUM_THREADS, VECLIB_MAXIMUM_THREADS and NUMEXPR_NUM_THREADS before
   torch is imported, re-executing the script when torch was imported already (OpenMP reads
   its variables once, at load), then torch.set_num_threads(n) and set_num_interop_threads(n).
   `worker_env(n)` gives the same variables to a worker subprocess.
2. `interleaved(fns, repeats, warmup)`: every candidate (ours and every reference) gets
   `warmup` untimed calls, then `repeats` (≥ 3) timed rounds, the candidates called in turn
   within each round (round r: a, b, c; round r+1: b, c, a - rotated, so none always runs
   first after a pause), in one process. Each call reports wall and process-CPU seconds;
   we keep median and min of both, and every sample. With `min_round_s`, a candidate faster
   than that is called again within its turn until the turn has lasted that long, and the
   turn's sample is the median of its calls (like timeit's autorange): a 50 ms pass then
   gets ~20 calls per round beside one 10 s reference call, so a single slow call on a noisy
   machine cannot move its figure.
   `ratio(stats, slow, fast)` also gives the median of the per-round ratios (`paired`): both
   turns of a round ran seconds apart, so drift in the machine's speed between rounds (or
   between runs) cancels in each ratio.
3. `os.getloadavg()` is recorded before and after; `load_warning` prints a warning when the
   1-minute load exceeds the cores in use (the figures then include other jobs' contention:
   compare the ratios, which interleaving protects, more than the absolute times).
4. Rows are printed as one `BENCH-ROW {json}` line each; `run_all.py` collects them with the
   machine's core count, torch version, commit and load into a results file. Standalone runs
   can pass `--json PATH` where the benchmark offers it.

Never timed in tests: tests/test_bench_quick.py runs the quick paths without asserting on times.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
ROW_PREFIX = "BENCH-ROW "
MIN_REPEATS = 3


def quick_mode(flag: bool = False) -> bool:
    return flag or os.environ.get("GFNEM_BENCH_QUICK") == "1"


def worker_env(threads: int, base: dict | None = None) -> dict:
    """A copy of the environment with every OpenMP/BLAS thread variable set to `threads`."""
    env = dict(os.environ if base is None else base)
    env.update({k: str(threads) for k in THREAD_VARS})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def pin_threads(threads: int) -> dict:
    """Make this process run with exactly `threads` intra-op, inter-op and OpenMP/MKL threads.

    Call it before importing torch; if torch is already imported with other thread variables,
    the script is re-executed with them set (once: the variable GFNEM_BENCH_PINNED guards it).
    Returns the thread settings as recorded in the rows."""
    want = str(threads)
    if any(os.environ.get(k) != want for k in THREAD_VARS):
        if "torch" in sys.modules and os.environ.get("GFNEM_BENCH_PINNED") != want:
            env = worker_env(threads)
            env["GFNEM_BENCH_PINNED"] = want
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
        os.environ.update({k: want for k in THREAD_VARS})
    import torch
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:            # already set (or inter-op work started): record what is
        pass
    return thread_info()


def default_threads() -> int:
    """1, or GFNEM_BENCH_THREADS (what `run_all.py --threads N` sets for every benchmark)."""
    return int(os.environ.get("GFNEM_BENCH_THREADS", "1"))


def threads_from_argv(default: int | None = None, argv: list[str] | None = None) -> int:
    """--threads N (or --threads=N) from the command line, read before argparse so that a
    script can set the thread variables before it imports torch; `default` when absent."""
    argv = sys.argv[1:] if argv is None else argv
    default = default_threads() if default is None else default
    for i, a in enumerate(argv):
        value = argv[i + 1] if a == "--threads" and i + 1 < len(argv) else \
            a.split("=", 1)[1] if a.startswith("--threads=") else None
        if value is not None:
            # a bad value is left to argparse (`thread_count`), which refuses it in one line
            return int(value) if value.isdigit() and int(value) >= 1 else default
    return default


def thread_count(text: str) -> int:
    """argparse type of every benchmark's --threads: a whole number >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        import argparse
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count (a whole number >= 1)")
    return int(text)


def set_thread_env(threads: int) -> None:
    """The OpenMP/BLAS variables only (no torch import): call at the top of a script."""
    if "torch" not in sys.modules:
        os.environ.update({k: str(threads) for k in THREAD_VARS})


def thread_info() -> dict:
    import torch
    return {"intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
            **{k.lower(): os.environ.get(k) for k in THREAD_VARS[:2]}}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def load_warning(avg: list[float], cores_in_use: int, when: str) -> str | None:
    """The warning printed when the 1-minute load average exceeds the cores in use."""
    if avg[0] <= cores_in_use:
        return None
    msg = (f"WARNING: load average {avg[0]:.2f} {when} exceeds the {cores_in_use} core(s) in "
           f"use ({os.cpu_count()} on the machine): other jobs share it, absolute times are "
           f"inflated; ratios are protected only by interleaving")
    print(msg, flush=True)
    return msg


def _call(fn: Callable) -> tuple[float, float]:
    cpu, start = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def _turn(fn: Callable, min_round_s: float) -> tuple[float, float, int]:
    """One candidate's turn in a round: calls until `min_round_s` has passed (at least one);
    the median wall and CPU seconds of those calls, and how many there were."""
    calls = [_call(fn)]
    spent = calls[0][0]
    while spent < min_round_s:
        calls.append(_call(fn))
        spent += calls[-1][0]
    return (statistics.median(c[0] for c in calls), statistics.median(c[1] for c in calls),
            len(calls))


def interleaved(fns: dict[str, Callable], repeats: int = MIN_REPEATS, warmup: int = 1,
                cores_in_use: int = 1, label: str = "",
                warm: dict[str, Callable] | None = None, min_round_s: float = 0.0) -> dict:
    """Time every candidate in `repeats` rounds, interleaved; returns per-candidate statistics
    (median_s, min_s, cpu_median_s, one sample per round, calls per round) and the load
    before/after. `warm` may give a cheaper warm-up call per candidate (e.g. two training
    steps instead of twenty); `min_round_s` repeats a fast candidate within its turn."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"at least {MIN_REPEATS} repeats, got {repeats}")
    if not min_round_s >= 0:
        raise ValueError(f"min_round_s must be >= 0, got {min_round_s}")
    names = list(fns)
    before = load()
    warnings = [w for w in [load_warning(before, cores_in_use, f"before {label}".strip())] if w]
    for name in names:
        for _ in range(warmup):
            (warm or {}).get(name, fns[name])()
    samples: dict[str, list[tuple[float, float, int]]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_turn(fns[name], min_round_s))
    after = load()
    warnings += [w for w in [load_warning(after, cores_in_use, f"after {label}".strip())] if w]
    stats = {name: summarize(s) for name, s in samples.items()}
    return {"stats": stats, "repeats": repeats, "warmup": warmup, "load_before": before,
            "load_after": after, "load_warnings": warnings, "order": "interleaved, rotated",
            "min_round_s": min_round_s}


def summarize(samples: list[tuple]) -> dict:
    """Statistics over rounds; a sample is (wall s, CPU s, calls in the round)."""
    wall, cpu = [s[0] for s in samples], [s[1] for s in samples]
    return {"median_s": statistics.median(wall), "min_s": min(wall),
            "cpu_median_s": statistics.median(cpu), "cpu_min_s": min(cpu),
            "wall_s": [round(x, 5) for x in wall], "cpu_s": [round(x, 5) for x in cpu],
            "calls_per_round": [s[2] for s in samples]}


def ratio(stats: dict, slow: str, fast: str) -> dict:
    """Speed-up of `fast` over `slow` from medians (the headline), from minima, from CPU
    medians, and paired: the median over rounds of each round's ratio (wall and CPU)."""
    s, f = stats[slow], stats[fast]
    out = {"speedup_median": s["median_s"] / f["median_s"],
           "speedup_min": s["min_s"] / f["min_s"],
           "speedup_cpu_median": s["cpu_median_s"] / max(f["cpu_median_s"], 1e-12)}
    if len(s["wall_s"]) == len(f["wall_s"]):
        out["speedup_paired"] = statistics.median(
            a / max(b, 1e-12) for a, b in zip(s["wall_s"], f["wall_s"]))
        if "cpu_s" in s and "cpu_s" in f:
            out["speedup_cpu_paired"] = statistics.median(
                a / max(b, 1e-12) for a, b in zip(s["cpu_s"], f["cpu_s"]))
    return out


def emit(row: dict, json_path: str | None = None) -> None:
    """Print a row for run_all.py to collect (and append it to `json_path` when given)."""
    print(ROW_PREFIX + json.dumps(row, default=float), flush=True)
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")


def collect_rows(text: str) -> list[dict]:
    return [json.loads(line[len(ROW_PREFIX):]) for line in text.splitlines()
            if line.startswith(ROW_PREFIX)]


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dirty_paths() -> list[str]:
    """Tracked files that differ from the commit (whoever edited them): what `-dirty` means."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                             text=True, capture_output=True).stdout
        return [line[3:] for line in out.splitlines() if line.strip()]
    except OSError:
        return []


def machine() -> dict:
    import torch
    return {"cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "commit": commit(), "dirty_paths": dirty_paths(),
            "processor": platform.processor() or platform.machine()}
