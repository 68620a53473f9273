"""Every GFlowNet objective as GFlowNet-EM's E-step, on both families (issue 18, item 2).

Why: objectives_study.py compares the objectives on fixed targets; a GFlowNet-EM user needs to
know what each does to the *model* it trains, whose reward moves. This trains the real recipes
through the real CLI, changing only the objective:

    nice -n 10 python tests/benchmarks/estep_objectives_study.py --out DIR --seeds 4

- grammar: recipes/synthetic-npcfg-gfnem.yaml on `gfnem prepare synthetic` (on-policy:
  temperature 1, uniform P_B, 2 trajectories per sentence, the E-loss gate 6 -> 3);
- vae: recipes/shapes-dvae-gfnem.yaml on `gfnem prepare shapes` (4 grids per image, an M-step
  every step, so updates = steps).

Each (family, objective, variant, seed) is one `gfnem train RECIPE --out RUN -q --set
objective.name=X [--set objective.alpha=0.5] --set train.max_model_updates=G ...` in a
subprocess with one thread (harness.worker_env(1)), at most --parallel at a time, stopping at
G model (grammar/decoder) updates or the step cap. Variant `on` is the recipe's on-policy
sampling; `off-iw` (divergences only) samples at `sampler.temperature=1.1` (the paper's
exploration) with `objective.importance_weighting=true`, without which the engine refuses it.

From each run's metrics.jsonl: at equal updates, the last validation figures (grammar: exact
NLL/token and sentence F1; vae: the importance-sampled bound, nats/image) and the final E-loss
(mean logged `e_loss` over the last 50 steps, on each objective's own scale). At equal
wall-clock: training seconds = the logged `elapsed_s` minus the evaluations before it (each
lasts from the record before it to its own); the budget W of a (family, seed) is the smallest
final training time among that seed's runs, which ran close in time under similar load (or
--wall-budget); each run is read at its last evaluation within W.

Resumable: each finished cell is appended to DIR/estep_objectives.csv at once and skipped by a
rerun with the same settings (DIR/settings.json); a run killed mid-way is started again. At
the end the CSV gets the equal-wall-clock columns, the markdown table is printed and written
to DIR/estep_objectives.md, and DIR/estep_objectives.png draws E-loss against steps and
validation NLL against training seconds. --quick (or GFNEM_BENCH_QUICK=1): small data, a few
steps, 1 seed, 2 objectives per family plus one off-policy divergence.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]     # harness, recovery_study; the repository
import harness  # noqa: E402
from recovery_study import read_rows  # noqa: E402

harness.set_thread_env(1)
from gfnem_cli.engine.objectives.from_recipe import DIVERGENCES, OBJECTIVE_NAMES  # noqa: E402

REPO = harness.REPO
OFF_POLICY = ("sampler.temperature=1.1", "objective.importance_weighting=true")
INTERRUPTED = {130, -2, -9, -15, 137, 143}     # killed runs are not results: rerun next time
FAMILIES = {
    "grammar": {"recipe": "synthetic-npcfg-gfnem.yaml", "nll": "val_nll_per_token",
                "f1": "val_sentence_f1", "unit": "nats/token",
                "prepare": ["synthetic"], "prepare_quick": ["synthetic", "--num-sentences", "300"],
                "full": {"updates": 150, "steps": 4000, "eval_every": 25, "sets": []},
                "quick": {"updates": 8, "steps": 120, "eval_every": 40,
                          "sets": ["data.max_valid_sentences=30"]},
                "quick_objectives": ["tb", "reverse_kl"]},
    "vae": {"recipe": "shapes-dvae-gfnem.yaml", "nll": "val_nll_nats", "f1": None,
            "unit": "nats/image", "prepare": ["shapes"],
            "prepare_quick": ["shapes", "--train", "400", "--valid", "40", "--test", "20"],
            "full": {"updates": 500, "steps": 500, "eval_every": 25,
                     "sets": ["data.max_valid_images=100"]},
            "quick": {"updates": 24, "steps": 24, "eval_every": 12,
                      "sets": ["data.max_valid_images=20", "em.valid_samples=4",
                               "train.batch_size=16"]},
            "quick_objectives": ["vargrad", "reverse_kl"]},
}
FIELDS = ["family", "objective", "variant", "seed", "status", "steps", "model_updates",
          "reached_updates", "esteps_per_update", "train_s", "wall_s", "final_nll", "final_f1",
          "final_e_loss", "final_ess", "nonfinite_skipped", "load_start", "load_end",
          "budget_s", "step_at_budget", "nll_at_budget", "f1_at_budget"]
TAIL = 50


def settings(args) -> dict:
    """Per family: the update target G, step cap, evaluation interval and extra --set values."""
    out = {}
    for name in args.families:
        cfg = dict(FAMILIES[name]["quick" if args.quick else "full"])
        for key in ("updates", "steps", "eval_every"):
            cfg[key] = getattr(args, f"{name}_{key}", None) or cfg[key]
        out[name] = cfg
    return out


def cells(args) -> list[tuple[str, str, str, int]]:
    """(family, objective, variant, seed), seed-major: a study cut short has whole seeds."""
    out = []
    for seed in range(args.seeds):
        for family in args.families:
            names = args.objectives or (FAMILIES[family]["quick_objectives"] if args.quick
                                        else list(OBJECTIVE_NAMES))
            offs = [n for n in names if n in DIVERGENCES] if args.off_policy else []
            out += [(family, objective, "on", seed) for objective in names]
            out += [(family, name, "off-iw", seed) for name in offs[:1 if args.quick else None]]
    return out


def run_dir(out: Path, cell) -> Path:
    return out / "runs" / "{}-{}-{}-s{}".format(*cell)


def train_args(cell, cfg: dict, data: Path) -> list[str]:
    family, objective, variant, seed = cell
    sets = [f"data.path={data}", f"train.seed={seed}", f"train.steps={cfg['steps']}",
            f"train.max_model_updates={cfg['updates']}", f"train.eval_every={cfg['eval_every']}",
            f"train.checkpoint_every={cfg['steps']}", f"objective.name={objective}",
            *cfg["sets"]]
    if objective in ("renyi", "tsallis"):
        sets.append("objective.alpha=0.5")
    if variant == "off-iw":
        sets += OFF_POLICY
    return ["train", str(REPO / "recipes" / FAMILIES[family]["recipe"]),
            *[word for item in sets for word in ("--set", item)]]


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def eval_curve(records: list[dict], nll_key: str, f1_key: str | None) -> list[dict]:
    """Each evaluation with its training seconds: elapsed_s minus the evaluations before it."""
    curve, spent, prev = [], 0.0, 0.0
    for r in records:
        if r["kind"] == "eval":
            curve.append({"step": r["step"], "train_s": prev - spent,
                          "nll": r.get(nll_key), "f1": r.get(f1_key) if f1_key else None})
            spent += r["elapsed_s"] - prev
        prev = r["elapsed_s"]
    return curve


def at_budget(curve: list[dict], budget: float) -> dict | None:
    """The last evaluation whose training time is within the budget (None if none is)."""
    inside = [e for e in curve if e["train_s"] <= budget + 1e-9]
    return inside[-1] if inside else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(values) if values else None


def summarize(run: Path, family: str, cfg: dict) -> dict:
    fam, records = FAMILIES[family], read_metrics(run)
    train = [r for r in records if r["kind"] == "train"]
    curve = eval_curve(records, fam["nll"], fam["f1"])
    if not train or not curve:
        return {}
    last = train[-1]
    updates = int(last.get("model_updates") or 0)
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").exists() else {}
    ess = _mean(r.get("obj_ess") for r in train[-TAIL:])
    return {"steps": last["step"], "model_updates": updates,
            "reached_updates": int(updates >= cfg["updates"]),
            "esteps_per_update": round(last["step"] / updates, 2) if updates else "",
            "train_s": round(curve[-1]["train_s"], 2), "wall_s": round(records[-1]["elapsed_s"], 2),
            "final_nll": curve[-1]["nll"], "final_f1": curve[-1]["f1"] if fam["f1"] else "",
            "final_e_loss": _mean(r.get("e_loss") for r in train[-TAIL:]),
            "final_ess": "" if ess is None else round(ess, 3),
            "nonfinite_skipped": report.get("nonfinite_steps_skipped", "")}


def run_cell(out: Path, cell, cfg: dict, data: Path) -> dict | None:
    """One `gfnem train` in a subprocess (one thread); None when it was interrupted."""
    run = run_dir(out, cell)
    shutil.rmtree(run, ignore_errors=True)     # left by a killed study: not a result, redo
    run.parent.mkdir(parents=True, exist_ok=True)
    before = harness.load()[0]
    done = subprocess.run([sys.executable, "-m", "gfnem_cli", *train_args(cell, cfg, data),
                           "--out", str(run), "-q"], cwd=REPO, env=harness.worker_env(1),
                          capture_output=True, text=True)
    (run.parent / f"{run.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode in INTERRUPTED:
        return None
    family, objective, variant, seed = cell
    row = {"family": family, "objective": objective, "variant": variant, "seed": seed,
           "status": "ok" if done.returncode == 0 else f"failed rc={done.returncode}",
           "load_start": before, "load_end": harness.load()[0]}
    row.update(summarize(run, family, cfg))
    return row


def write(path: Path, rows: list[dict], mode: str = "a") -> None:
    """Append rows (with a header if the file is new), or write the file afresh (mode "w")."""
    fresh = mode == "w" or not path.exists()
    with path.open(mode, newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if fresh:
            writer.writeheader()
        writer.writerows(rows)


def fill_budgets(out: Path, rows: list[dict], budget: float | None) -> dict[str, list]:
    """Add the equal-wall-clock columns to every row. A seed's runs ran close in time, under
    similar load, so the budget W is per (family, seed): the smallest final training time among
    that seed's runs (from the curves, not the rounded column). Returns each family's Ws."""
    budgets: dict[str, list] = {}
    for family, seed in dict.fromkeys((r["family"], r["seed"]) for r in rows):
        fam = FAMILIES[family]
        group = [r for r in rows if (r["family"], r["seed"], r["status"]) == (family, seed, "ok")]
        curves = [(r, eval_curve(read_metrics(run_dir(out, (family, r["objective"], r["variant"],
                                                            int(seed)))), fam["nll"], fam["f1"]))
                  for r in group]
        curves = [(r, c) for r, c in curves if c]
        if not curves:
            continue
        w = budget if budget is not None else min(c[-1]["train_s"] for _, c in curves)
        budgets.setdefault(family, []).append(w)
        for r, curve in curves:
            hit = at_budget(curve, w)
            r.update(budget_s=round(w, 2), step_at_budget=hit["step"] if hit else "",
                     nll_at_budget=hit["nll"] if hit else "",
                     f1_at_budget=hit["f1"] if hit and fam["f1"] else "")
    return budgets


def _stat(rows, key, digits=3) -> str:
    values = [float(r[key]) for r in rows if r.get(key) not in ("", None)]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def table(rows: list[dict], conf: dict, budgets: dict) -> str:
    lines = []
    for family, cfg in conf.items():
        group = [r for r in rows if r["family"] == family]
        if not group:
            continue
        fam = FAMILIES[family]
        f1 = [fam["f1"]] if fam["f1"] else []      # grammar only
        lines += [f"**{family}** (`recipes/{fam['recipe']}`): G = {cfg['updates']} model updates "
                  f"or {cfg['steps']} steps, evaluation every {cfg['eval_every']} steps; NLL in "
                  f"{fam['unit']} on the validation split; equal wall-clock budget W per seed "
                  f"(its shortest run): {', '.join(f'{w:.1f}' for w in budgets.get(family, []))}"
                  " training seconds.", ""]
        head = ["objective", "variant", "seeds", "steps", "updates (reached G)", "E-steps/update",
                "train s", "NLL @G", *["F1 @G"] * len(f1), "E-loss (last 50)", "ESS/N",
                "NLL @W", "step @W", *["F1 @W"] * len(f1)]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in sorted({(r["objective"], r["variant"]) for r in group},
                          key=lambda k: (k[1] != "on", OBJECTIVE_NAMES.index(k[0]))):
            cell = [r for r in group if (r["objective"], r["variant"]) == key]
            ok = [r for r in cell if r["status"] == "ok"]
            reached = sum(int(r["reached_updates"] or 0) for r in ok)
            vals = [*key, f"{len(ok)}/{len(cell)}", _stat(ok, "steps", 0),
                    f"{_stat(ok, 'model_updates', 0)} ({reached}/{len(ok)})",
                    _stat(ok, "esteps_per_update", 1), _stat(ok, "train_s", 0),
                    _stat(ok, "final_nll"), *[_stat(ok, "final_f1", 1) for _ in f1],
                    _stat(ok, "final_e_loss"), _stat(ok, "final_ess", 2),
                    _stat(ok, "nll_at_budget"), _stat(ok, "step_at_budget", 0),
                    *[_stat(ok, "f1_at_budget", 1) for _ in f1]]
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(out: Path, rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(2, len(families), figsize=(6.5 * len(families), 8), squeeze=False)
    colours = {name: plt.cm.tab10(i) for i, name in enumerate(OBJECTIVE_NAMES)}
    for col, family in enumerate(families):
        fam = FAMILIES[family]
        top, bottom = axes[0][col], axes[1][col]
        group = [r for r in rows if r["family"] == family and r["status"] == "ok"]
        for key in dict.fromkeys((r["objective"], r["variant"]) for r in group):
            runs = [read_metrics(run_dir(out, (family, *key, int(r["seed"]))))
                    for r in group if (r["objective"], r["variant"]) == key]
            style = dict(color=colours.get(key[0]), linestyle="-" if key[1] == "on" else "--",
                         label=f"{key[0]} ({key[1]})")
            top.plot(*_binned([[(r["step"], r["e_loss"]) for r in recs if r["kind"] == "train"
                                and r.get("e_loss") is not None] for recs in runs]), **style)
            curves = [eval_curve(recs, fam["nll"], fam["f1"]) for recs in runs]
            n = min(len(c) for c in curves)
            if any(c[i]["nll"] is None for c in curves for i in range(n)):
                continue
            bottom.plot([statistics.mean(c[i]["train_s"] for c in curves) for i in range(n)],
                        [statistics.mean(c[i]["nll"] for c in curves) for i in range(n)],
                        marker=".", **style)
        top.set(xlabel="training steps (log)", ylabel="E-loss (own scale; seeds' mean)",
                title=family, xscale="log", yscale="log")      # every logged E-loss is > 0
        bottom.set(xlabel="training seconds (evaluations excluded)",
                   ylabel=f"validation NLL ({fam['unit']}), mean over seeds")
        top.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _binned(series: list[list[tuple[int, float]]], bins: int = 40):
    """(x, y): the seeds' E-loss averaged in `bins` step bins, then over seeds."""
    top = max((s[-1][0] for s in series if s), default=1)
    width = max(1, math.ceil(top / bins))
    per_bin: dict[int, list[float]] = {}
    for s in series:
        own: dict[int, list[float]] = {}
        for step, value in s:
            own.setdefault((step - 1) // width, []).append(value)
        for b, values in own.items():
            per_bin.setdefault(b, []).append(statistics.mean(values))
    keys = sorted(per_bin)
    return [(b + 0.5) * width for b in keys], [statistics.mean(per_bin[b]) for b in keys]


def prepare(out: Path, family: str, quick: bool, given: Path | None) -> Path:
    if given is not None:
        return given.resolve()
    data = (out / "data" / family).resolve()
    if not (data / "manifest.json").exists():
        words = FAMILIES[family]["prepare_quick" if quick else "prepare"]
        subprocess.run([sys.executable, "-m", "gfnem_cli", "prepare", *words, "--out", str(data)],
                       cwd=REPO, env=harness.worker_env(1), check=True, capture_output=True)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/estep_objectives"))
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--objectives", nargs="+", choices=list(OBJECTIVE_NAMES), default=None,
                        help="default: all eight (quick: two per family)")
    parser.add_argument("--no-off-policy", dest="off_policy", action="store_false",
                        help="skip the divergences' off-policy, importance-weighted variants")
    parser.add_argument("--seeds", type=int, default=None, help="default 4, quick 1")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    for family in FAMILIES:
        for key in ("updates", "steps", "eval_every"):
            parser.add_argument(f"--{family}-{key.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--data-grammar", type=Path, help="a prepared synthetic corpus")
    parser.add_argument("--data-vae", type=Path, help="a prepared shapes set")
    parser.add_argument("--wall-budget", type=float, default=None, help="in training seconds "
                        "(default: per family, the shortest run's)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.quick = harness.quick_mode(args.quick)
    args.seeds = args.seeds or (1 if args.quick else 4)
    args.out.mkdir(parents=True, exist_ok=True)
    conf = settings(args)
    saved = args.out / "settings.json"
    if saved.exists() and json.loads(saved.read_text()) != conf:
        sys.exit(f"{saved}: another study's settings ({saved.read_text().strip()}); "
                 "use another --out or the same sizes")
    saved.write_text(json.dumps(conf, indent=1))
    data = {f: prepare(args.out, f, args.quick, getattr(args, f"data_{f}")) for f in args.families}
    csv_path = args.out / "estep_objectives.csv"
    done = {(r["family"], r["objective"], r["variant"], int(r["seed"]))
            for r in read_rows(csv_path)}
    todo = [c for c in cells(args) if c not in done]
    every = cells(args)
    print(f"{len(every)} cells, {len(every) - len(todo)} already in {csv_path}, {len(todo)} to run",
          flush=True)
    started = time.time()
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        futures = {pool.submit(run_cell, args.out, c, conf[c[0]], data[c[0]]): c for c in todo}
        for future in as_completed(futures):
            row = future.result()
            if row is None:
                print(f"{futures[future]}: interrupted, not recorded", flush=True)
                continue
            write(csv_path, [row])
            print(f"{row['family']} {row['objective']} {row['variant']} seed {row['seed']}: "
                  f"{row['status']}, NLL {row.get('final_nll')}, updates "
                  f"{row.get('model_updates')} in {row.get('steps')} steps, "
                  f"{row.get('train_s')} s ({time.time() - started:.0f} s into the study)",
                  flush=True)
    rows = read_rows(csv_path)
    budgets = fill_budgets(args.out, rows, args.wall_budget)
    write(csv_path.with_suffix(".tmp"), rows, "w")
    os.replace(csv_path.with_suffix(".tmp"), csv_path)
    text = table(rows, conf, budgets)
    (args.out / "estep_objectives.md").write_text(text)
    plot(args.out, rows, args.out / "estep_objectives.png")
    print(text)
    print(f"wrote {csv_path}, {args.out / 'estep_objectives.md'} and "
          f"{args.out / 'estep_objectives.png'} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
