"""Run the benchmarks in this folder, each in its own subprocess (what `make bench` calls).

    python3 tests/benchmarks/run_all.py                  # every bench_*.py, then every *_study.py
    python3 tests/benchmarks/run_all.py inside           # selected ones: inside, bench_inside(.py)
    python3 tests/benchmarks/run_all.py --quick          # GFNEM_BENCH_QUICK=1 for each benchmark
    python3 tests/benchmarks/run_all.py inside -- --lengths 20   # arguments after -- go to each
    python3 tests/benchmarks/run_all.py --threads 2      # every thread pool of every benchmark
    python3 tests/benchmarks/run_all.py --list

Quick mode travels as an environment variable, not a flag, so benchmarks that take no
`--quick` still run; a benchmark honours it where it has something expensive to skip. So do
the threads (GFNEM_BENCH_THREADS, and OMP/MKL/OpenBLAS variables set for every child).

Results: the `BENCH-ROW` lines the benchmarks print (`harness.py`) are collected, with the
machine's core count, torch and Python versions, the commit (`-dirty` when tracked files
differ from it), the threads, the load average before and after and each benchmark's exit
status and duration, into `bench-results/<commit>-<cores>cores-<UTC timestamp>.json`
(`--results DIR` elsewhere, `--no-save` for none). The folder is tracked, not ignored:
RESULTS.md quotes these files, so the figures it prints stay in the history beside the code.
Exits non-zero when a benchmark fails (after running the others).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

REPO = HERE.parents[1]


def discover() -> dict[str, Path]:
    """bench_*.py by their suffix, then the studies (*_study.py) by their full stem."""
    found = {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py"))}
    found.update({p.stem: p for p in sorted(HERE.glob("*_study.py"))})
    return found


def resolve(names: list[str], found: dict[str, Path]) -> list[Path]:
    chosen = []
    for name in names:
        key = Path(name).stem
        key = key[len("bench_"):] if key.startswith("bench_") else key
        if key not in found:
            sys.exit(f"run_all: no benchmark '{name}'; available: {', '.join(found) or 'none'}")
        chosen.append(found[key])
    return chosen


def run_one(path: Path, extra: list[str], env: dict) -> tuple[int, list[dict]]:
    """Run one benchmark, echoing its output as it comes; its exit code and rows."""
    proc = subprocess.Popen([sys.executable, str(path), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if not line.startswith(harness.ROW_PREFIX):     # rows go to the file, not the screen
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.wait(), harness.collect_rows("".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="set GFNEM_BENCH_QUICK=1: benchmarks skip their longest parts")
    parser.add_argument("--threads", type=harness.thread_count, default=1, help="threads of every benchmark")
    parser.add_argument("--results", type=Path, default=REPO / "bench-results")
    parser.add_argument("--no-save", action="store_true", help="write no results file")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    found = discover()
    if args.list:
        print("\n".join(found))
        return 0
    chosen = resolve(args.names, found) if args.names else list(found.values())
    env = harness.worker_env(args.threads)
    env["GFNEM_BENCH_THREADS"] = str(args.threads)
    if args.quick:
        env["GFNEM_BENCH_QUICK"] = "1"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"started_utc": stamp, "machine": harness.machine(), "threads": args.threads,
              "quick": args.quick, "extra_args": extra, "load_before": harness.load(),
              "benchmarks": [], "rows": []}
    failed = []
    for path in chosen:
        print(f"=== {path.name} {' '.join(extra)}".rstrip(), flush=True)
        start, load = time.perf_counter(), harness.load()
        code, rows = run_one(path, extra, env)
        seconds = time.perf_counter() - start
        print(f"=== {path.name}: exit {code} after {seconds:.1f} s", flush=True)
        record["benchmarks"].append({"name": path.name, "exit": code, "seconds": seconds,
                                     "load_before": load, "load_after": harness.load(),
                                     "rows": len(rows)})
        record["rows"] += [{"benchmark": path.name, **row} for row in rows]
        if code != 0:
            failed.append(path.name)
    record["load_after"] = harness.load()
    harness.load_warning(record["load_after"], args.threads, "at the end of the run")
    if not args.no_save:
        args.results.mkdir(parents=True, exist_ok=True)
        m = record["machine"]
        out = args.results / f"{m['commit']}-{m['cpu_count']}cores-{stamp}.json"
        out.write_text(json.dumps(record, indent=1, default=float) + "\n")
        print(f"results: {out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
