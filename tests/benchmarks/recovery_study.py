"""How close does a learner get to the grammar that generated the data? (issue 16 item 1)

    python tests/benchmarks/recovery_study.py --out runs/recovery --seeds 4 \
        --grid "size=20x30,40x60,80x120" --grid "lr=0.001,0.002" --steps 1500

Each configuration is the recipe (`--recipe`, default recipes/synthetic-npcfg.yaml) with the
`--set` values its levers name, trained on the embedded synthetic corpus (or `--data DIR`) once
per seed with `gfnem train`, then evaluated on the test split with `gfnem evaluate --json`.
A lever is `name=v1,v2,...`; the names are shorthands (`size` = NTxPT, `lr`, `batch`,
`steps`, `curriculum` = start word count, 0 = off, `warmup`... see LEVERS) or any recipe key
(`model.symbol_dim=128,256`). Levers multiply (a full grid).

Every finished (configuration, seed) row is appended to OUT/recovery.csv at once: CPU seconds
of the training process, steps, sentence and corpus F1, NLL/token, the true grammar's
NLL/token and the gap in percent. A rerun skips rows already there, so the study resumes
after a kill. At the end it prints (and writes to OUT/recovery.md) a table of mean ± sd over
seeds per configuration, with the best validation-selected seed (the restart a user would
keep), and draws OUT/recovery.png: NLL gap and sentence F1 against CPU seconds. Quick mode
(`run_all.py --quick`, GFNEM_BENCH_QUICK=1) trains 2 seeds for 100 steps.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LEVERS = {   # shorthand -> how one value becomes --set arguments
    "size": lambda v: [f"model.nonterminals={v.split('x')[0]}",
                       f"model.preterminals={v.split('x')[1]}"],
    "lr": lambda v: [f"train.lr={v}"],
    "batch": lambda v: [f"train.batch_size={v}"],
    "steps": lambda v: [f"train.steps={v}"],
    "curriculum": lambda v: [f"train.curriculum_start={v}"],
    "dim": lambda v: [f"model.symbol_dim={v}"],
    "decay": lambda v: [f"train.lr_decay={v}"],      # constant | linear | cosine
    "warmup": lambda v: [f"train.lr_warmup={v}"],    # model updates of linear warm-up
}
FIELDS = ["config", "seed", "cpu_s", "steps", "sentence_f1", "corpus_f1", "nll_per_token",
          "true_nll_per_token", "nll_gap_pct", "best_val_nll_per_token"]


def seed_number(text: str) -> int:
    """--first-seed: a seed train.seed accepts, refused by argparse (exit 2) otherwise."""
    value = int(text) if text.lstrip("-").isdigit() else -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (an integer in [0, 2^32))")
    return value


def parse_grid(specs: list[str]) -> list[dict[str, str]]:
    axes = []
    for spec in specs:
        name, _, values = spec.partition("=")
        if not values:
            sys.exit(f"recovery_study: --grid {spec!r}: write name=v1,v2")
        axes.append([(name.strip(), v.strip()) for v in values.split(",") if v.strip()])
    return [dict(choice) for choice in itertools.product(*axes)] if axes else [{}]


def overrides(config: dict[str, str]) -> list[str]:
    out = []
    for name, value in config.items():
        out += LEVERS[name](value) if name in LEVERS else [f"{name}={value}"]
    return out


def label(config: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items()) or "recipe"


def gfnem(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "gfnem_cli", *args], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"recovery_study: gfnem {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return done


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(out: Path, data: Path, recipe: Path, config: dict[str, str], seed: int,
            steps: int) -> dict:
    name = "-".join(f"{k}{v}" for k, v in config.items()).replace("/", "_") or "recipe"
    run = out / "runs" / f"{name}-s{seed}"
    sets = [f"data.path={data}", f"train.seed={seed}", f"train.steps={steps}",
            *overrides(config)]
    before = child_cpu()
    args = ["train", str(recipe), "--out", str(run), "-q"]
    for item in sets:
        args += ["--set", item]
    if (run / "checkpoints" / "last.pt").exists():
        args.append("--resume")
    gfnem(*args)
    cpu = child_cpu() - before
    report = json.loads((run / "report.json").read_text())
    figures = out / "runs" / f"{name}-s{seed}.json"
    gfnem("evaluate", str(run), "--data", str(data), "--split", "test", "--json", str(figures))
    result = json.loads(figures.read_text())
    true_nll = result.get("true_nll_per_token")
    nll = result["nll_per_token"]
    return {"config": label(config), "seed": seed, "cpu_s": round(cpu, 1),
            "steps": report["steps"], "sentence_f1": result["sentence_f1"],
            "corpus_f1": result["corpus_f1"], "nll_per_token": nll,
            "true_nll_per_token": true_nll,
            "nll_gap_pct": 100 * (nll - true_nll) / true_nll if true_nll else None,
            "best_val_nll_per_token": report.get("best", {}).get("val_nll_per_token")}


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def table(rows: list[dict]) -> str:
    lines = ["| configuration | seeds | sentence F1 | NLL/token | gap to true | CPU s / seed "
             "| restart chosen by validation: F1 / gap |", "|---|---|---|---|---|---|---|"]
    by_config: dict[str, list[dict]] = {}
    for row in rows:
        by_config.setdefault(row["config"], []).append(row)

    def stat(values):
        values = [float(v) for v in values]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {sd:.2f}"

    for config, group in by_config.items():
        chosen = min(group, key=lambda r: float(r["best_val_nll_per_token"] or "inf"))
        lines.append(f"| {config} | {len(group)} | {stat(r['sentence_f1'] for r in group)} | "
                     f"{stat(r['nll_per_token'] for r in group)} | "
                     f"{stat(r['nll_gap_pct'] for r in group)}% | "
                     f"{statistics.mean(float(r['cpu_s']) for r in group):.0f} | "
                     f"{float(chosen['sentence_f1']):.2f} / "
                     f"{float(chosen['nll_gap_pct']):.2f}% |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for config in dict.fromkeys(r["config"] for r in rows):
        group = [r for r in rows if r["config"] == config]
        cpu = [float(r["cpu_s"]) for r in group]
        left.scatter(cpu, [float(r["nll_gap_pct"]) for r in group], label=config, s=18)
        right.scatter(cpu, [float(r["sentence_f1"]) for r in group], label=config, s=18)
    left.set(xlabel="CPU seconds (training)", ylabel="test NLL gap to the true grammar (%)")
    right.set(xlabel="CPU seconds (training)", ylabel="test sentence F1")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/recovery"))
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "synthetic-npcfg.yaml")
    parser.add_argument("--data", type=Path, default=None,
                        help="a prepared synthetic corpus (default: the embedded one, made here)")
    parser.add_argument("--grid", action="append", default=[], help="name=v1,v2 (repeatable)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=seed_number, default=0,
                        help="seeds FIRST .. FIRST+SEEDS-1 (two processes can split the seeds)")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    if os.environ.get("GFNEM_BENCH_QUICK") == "1":      # run_all.py --quick
        args.seeds, args.steps = min(args.seeds, 2), min(args.steps, 100)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or args.out / "data"
    if args.data is None and not (data / "manifest.json").exists():
        gfnem("prepare", "synthetic", "--out", str(data))
    csv_path = args.out / "recovery.csv"
    done = {(r["config"], int(r["seed"])) for r in read_rows(csv_path)}
    for config in parse_grid(args.grid):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if (label(config), seed) in done:
                continue
            started = time.time()
            row = run_one(args.out, data, args.recipe, config, seed, args.steps)
            fresh = not csv_path.exists()
            with csv_path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, FIELDS)
                if fresh:
                    writer.writeheader()
                writer.writerow(row)
            print(f"{row['config']} seed {seed}: F1 {row['sentence_f1']:.2f}, NLL "
                  f"{row['nll_per_token']:.4f} (gap {row['nll_gap_pct']:.2f}%), "
                  f"{row['cpu_s']:.0f} CPU s, {time.time() - started:.0f} s", flush=True)
    rows = read_rows(csv_path)
    text = table(rows)
    (args.out / "recovery.md").write_text(text + "\n")
    plot(rows, args.out / "recovery.png")
    print(text)


if __name__ == "__main__":
    main()
