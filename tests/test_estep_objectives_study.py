"""The E-step objectives study (tests/benchmarks/estep_objectives_study.py, issue 18 item 2):
its equal-wall-clock reading, its cells, and its quick mode end to end through the real CLI on
small prepared data, with a resume that must skip every finished cell. Nothing here asserts on
a time or on which objective wins: only that each cell ran, reported finite figures and was
recorded once."""
from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "benchmarks" / "estep_objectives_study.py"
sys.path.insert(0, str(STUDY.parent))
import estep_objectives_study as study  # noqa: E402


def _rec(kind, step, elapsed, **extra):
    return {"kind": kind, "step": step, "elapsed_s": elapsed, **extra}


def test_training_seconds_exclude_evaluations_and_the_budget_takes_the_last_eval_within():
    records = [_rec("train", 1, 1.0), _rec("train", 2, 2.0),
               _rec("eval", 2, 5.0, val_nll_per_token=4.0, val_sentence_f1=30.0),  # 3 s eval
               _rec("train", 3, 6.0), _rec("train", 4, 7.0),
               _rec("eval", 4, 7.5, val_nll_per_token=3.9, val_sentence_f1=35.0)]
    curve = study.eval_curve(records, "val_nll_per_token", "val_sentence_f1")
    assert [e["train_s"] for e in curve] == [2.0, 4.0]
    assert [e["nll"] for e in curve] == [4.0, 3.9] and curve[1]["f1"] == 35.0
    assert study.at_budget(curve, 3.99)["step"] == 2
    assert study.at_budget(curve, 4.0)["step"] == 4
    assert study.at_budget(curve, 1.5) is None


def test_cells_are_seed_major_with_off_policy_variants_for_the_divergences_only():
    args = argparse.Namespace(seeds=2, families=["grammar", "vae"], objectives=None,
                              quick=False, off_policy=True)
    cells = study.cells(args)
    assert len(cells) == len(set(cells)) == 2 * 2 * (8 + 4)
    assert [c[3] for c in cells] == sorted(c[3] for c in cells)
    assert {c[1] for c in cells if c[2] == "off-iw"} == set(study.DIVERGENCES)
    args.off_policy = False
    assert all(c[2] == "on" for c in study.cells(args))
    sets = study.train_args(("grammar", "renyi", "off-iw", 3),
                            study.FAMILIES["grammar"]["full"], Path("/d"))
    for item in ("objective.name=renyi", "objective.alpha=0.5", "sampler.temperature=1.1",
                 "objective.importance_weighting=true", "train.seed=3", "data.path=/d",
                 "train.max_model_updates=150"):
        assert item in sets
    plain = study.train_args(("vae", "tb", "on", 0), study.FAMILIES["vae"]["full"], Path("/d"))
    assert "sampler.temperature=1.1" not in plain and "objective.alpha=0.5" not in plain


def _run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STUDY), "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_quick_study_end_to_end_then_resume_skips_every_finished_cell(tmp_path):
    out = tmp_path / "study"
    done = _run(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(out / "estep_objectives.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = [(r["family"], r["objective"], r["variant"], int(r["seed"])) for r in rows]
    assert sorted(keys) == sorted([
        ("grammar", "tb", "on", 0), ("grammar", "reverse_kl", "on", 0),
        ("grammar", "reverse_kl", "off-iw", 0), ("vae", "vargrad", "on", 0),
        ("vae", "reverse_kl", "on", 0), ("vae", "reverse_kl", "off-iw", 0)])
    quick = {f: study.FAMILIES[f]["quick"] for f in study.FAMILIES}
    for r in rows:
        cap = quick[r["family"]]
        assert r["status"] == "ok", r
        assert math.isfinite(float(r["final_nll"])) and float(r["final_nll"]) > 0
        assert math.isfinite(float(r["final_e_loss"]))
        assert 1 <= int(r["model_updates"]) <= cap["updates"]
        assert int(r["steps"]) <= cap["steps"]
        assert r["reached_updates"] == str(int(int(r["model_updates"]) >= cap["updates"]))
        assert 0 < float(r["train_s"]) <= float(r["wall_s"])
        if r["family"] == "grammar":
            assert 0 <= float(r["final_f1"]) <= 100
        else:
            assert r["final_f1"] == "" and r["steps"] == r["model_updates"]   # M-step every step
        if r["objective"] == "reverse_kl":
            assert 0 < float(r["final_ess"]) <= 1.0 + 1e-6
    for family in study.FAMILIES:
        group = [r for r in rows if r["family"] == family]
        assert len({r["budget_s"] for r in group}) == 1        # one budget per family
        budget = float(group[0]["budget_s"])
        assert budget == min(float(r["train_s"]) for r in group) or \
            abs(budget - min(float(r["train_s"]) for r in group)) < 0.01
        fastest = min(group, key=lambda r: float(r["train_s"]))
        assert math.isfinite(float(fastest["nll_at_budget"]))   # its own last evaluation
        assert fastest["step_at_budget"] == fastest["steps"]
        for r in group:
            if r["step_at_budget"]:
                assert int(r["step_at_budget"]) <= int(r["steps"])
    off = out / "runs" / "grammar-reverse_kl-off-iw-s0" / "config.yaml"
    assert "temperature: 1.1" in off.read_text()
    assert "importance_weighting: true" in off.read_text()
    table = (out / "estep_objectives.md").read_text()
    for _, objective, variant, _ in keys:
        assert f"| {objective} | {variant} | 1/1 |" in table
    assert table.count("| tb | on |") == 1 and "**grammar**" in table and "**vae**" in table
    assert (out / "estep_objectives.png").stat().st_size > 10_000

    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.jsonl")}
    assert len(stamps) == 6
    again = _run(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 cells, 6 already in" in again.stdout and "0 to run" in again.stdout
    with open(out / "estep_objectives.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
