"""Steps per second of each method with one process and with two gloo ranks on CPU (issue 14).

    python tests/benchmarks/bench_data_parallel.py [--steps 40] [--repeats 3] [--threads 1]

Each candidate is a real `gfnem train` (one process, or `torchrun --nproc_per_node=2`, every
rank pinned to `--threads` threads) on a tiny corpus / image set made here, with the same
global batch; the rate is steps / the run's own `train_seconds` (report.json: time inside
training steps, so start-up, validation and checkpoints are left out). One process and two
ranks alternate, round after round (`--repeats`, at least 3), and the median and min are kept.
Scaling efficiency = (two-rank rate / one-process rate) / 2; on a machine with fewer free
cores than ranks × threads it measures contention, not the method (the load is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

REPO = HERE.parents[1]
GRAMMAR = ["--set", "train.batch_size=32", "--set", "model.nonterminals=10",
           "--set", "model.preterminals=15", "--set", "model.symbol_dim=64",
           "--set", "sampler.d_model=64", "--set", "sampler.num_layers=2",
           "--set", "sampler.num_heads=4"]
IMAGES = ["--set", "train.batch_size=32", "--set", "model.channels=16",
          "--set", "sampler.channels=16", "--set", "baseline.encoder_channels=16"]
METHODS = {   # name: (recipe, data key, overrides)
    "marginal": ("synthetic-npcfg.yaml", "corpus", GRAMMAR),
    "gfnem-grammar": ("synthetic-npcfg-gfnem.yaml", "corpus", GRAMMAR),
    "vqvae": ("shapes-gumbel.yaml", "shapes", ["--set", "method=vqvae", *IMAGES]),
    "gfnem-images": ("shapes-dvae-gfnem.yaml", "shapes", IMAGES),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gfnem(args: list[str], threads: int, ranks: int = 1) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                 "--master-addr=127.0.0.1", f"--master-port={free_port()}"] if ranks > 1
                else [sys.executable])
    env = harness.worker_env(threads)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    done = subprocess.run([*launcher, "-m", "gfnem_cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        text = done.stderr if len(done.stderr) < 8000 else (done.stderr[:4000] + "\n...\n"
                                                             + done.stderr[-4000:])
        sys.exit(f"bench_data_parallel: {' '.join(args[:3])} failed:\n{text}")


def rate(root: Path, method: str, data: dict, steps: int, threads: int, ranks: int,
         count: list[int]) -> float:
    recipe, key, overrides = METHODS[method]
    count[0] += 1
    run = root / f"{method}-{ranks}-{count[0]}"
    gfnem(["train", str(REPO / "recipes" / recipe), "--out", str(run), "-q", "--device", "cpu",
           "--set", f"data.path={data[key]}", "--set", f"train.steps={steps}",
           "--set", f"train.eval_every={10 * steps}", "--set",
           f"train.checkpoint_every={10 * steps}", *overrides], threads, ranks)
    report = json.loads((run / "report.json").read_text())
    return report["steps"] / report["train_seconds"]


def main() -> None:
    threads = harness.threads_from_argv()
    harness.set_thread_env(threads)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=harness.MIN_REPEATS)
    parser.add_argument("--threads", type=harness.thread_count, default=threads)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    if args.repeats < harness.MIN_REPEATS:
        sys.exit(f"bench_data_parallel: at least {harness.MIN_REPEATS} repeats")
    steps = 8 if harness.quick_mode() else args.steps
    methods = args.methods[:1] if harness.quick_mode() else args.methods
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = {"corpus": root / "corpus", "shapes": root / "shapes"}
        gfnem(["prepare", "synthetic", "--out", str(data["corpus"]), "--num-sentences", "600",
               "--max-length", "15"], threads)
        gfnem(["prepare", "shapes", "--out", str(data["shapes"]), "--train", "256",
               "--valid", "8", "--test", "8"], threads)
        count = [0]
        for method in methods:
            before = harness.load()
            warnings = [w for w in [harness.load_warning(before, 2 * threads, "before")] if w]
            rates: dict[int, list[float]] = {1: [], 2: []}
            for r in range(args.repeats):
                for ranks in ((1, 2) if r % 2 == 0 else (2, 1)):
                    rates[ranks].append(rate(root, method, data, steps, threads, ranks, count))
            after = harness.load()
            warnings += [w for w in [harness.load_warning(after, 2 * threads, "after")] if w]
            one, two = statistics.median(rates[1]), statistics.median(rates[2])
            row = {"benchmark": "data_parallel", "method": method, "steps": steps,
                   "global_batch": 32, "threads_per_rank": threads,
                   "steps_per_s_1": one, "steps_per_s_2": two,
                   "min_steps_per_s_1": min(rates[1]), "min_steps_per_s_2": min(rates[2]),
                   "samples_1": rates[1], "samples_2": rates[2],
                   "scaling_efficiency": two / one / 2, "load_before": before,
                   "load_after": after, "load_warnings": warnings,
                   "cores": os.cpu_count(), "quick": harness.quick_mode()}
            print(f"{method:14s} 1 process {one:7.2f} steps/s   2 gloo ranks {two:7.2f} "
                  f"steps/s   scaling efficiency {100 * row['scaling_efficiency']:.0f}%",
                  flush=True)
            harness.emit(row)


if __name__ == "__main__":
    main()
