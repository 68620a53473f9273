"""`gfnem summarize` and `gfnem plot` over tiny runs of both families, and provenance in
every `evaluate --json`.

Three 4-step GFlowNet-EM grammar runs (seeds 0, 1, 2; the tiny recipe of the grammar CLI
tests) give the summary's rows: its mean and sd are checked against figures computed here
from each run's report.json and evaluation JSON. Two tiny image runs show the other family
goes through the same reading. The refusals are one line, exit 2, and write nothing.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "grammars"))
sys.path.insert(0, str(TESTS / "vae"))
from test_gfnem_train_cli import TINY  # noqa: E402  (the grammar CLI tests' tiny recipe)
from test_vae_cli import TINY as TINY_IMAGES  # noqa: E402  (and the image tests' overrides)

REPO = TESTS.parent
PNG = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1, 2)


def ok(runner, app, *args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def refused(runner, app, needles, *args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result


@pytest.fixture(scope="module")
def grammar_runs(tmp_path_factory):
    """A tiny synthetic corpus and three runs of it, seeds 0, 1, 2, each evaluated on test."""
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    runner, root = CliRunner(), tmp_path_factory.mktemp("summaries")
    corpus = root / "data"
    ok(runner, app, "prepare", "synthetic", "--out", corpus, "--num-sentences", 60,
       "--max-length", 8)
    config = json.loads(json.dumps(TINY))
    config["data"]["path"] = str(corpus)
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config), encoding="utf-8")
    runs = []
    for seed in SEEDS:
        run = root / f"seed{seed}"
        ok(runner, app, "train", recipe, "--out", run, "-q", "--device", "cpu",
           "--set", f"train.seed={seed}")
        ok(runner, app, "evaluate", run, "--data", corpus, "--json", run / "test.json",
           "--device", "cpu")
        runs.append(run)
    return {"corpus": corpus, "recipe": recipe, "runs": runs, "root": root}


def expected(values):
    return statistics.mean(values), statistics.stdev(values)


def test_summarize_reports_mean_and_sd_of_the_runs(grammar_runs, tmp_path, runner, cli_app):
    runs = grammar_runs["runs"]
    out = tmp_path / "summary.json"
    # wide enough for the table's columns (validation F1 is among a report's best.* figures);
    # narrow output keeps each figure whole in its plain line, checked below
    result = runner.invoke(cli_app, ["summarize", *map(str, runs), "--json", str(out)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    reports = [json.loads((run / "report.json").read_text()) for run in runs]
    metrics = [f"best.{key}" for key, value in reports[0]["best"].items()
               if not isinstance(value, bool)]
    assert summary["metrics"] == metrics and "best.val_nll_per_token" in metrics
    for metric in metrics:
        mean, sd = expected([report["best"][metric[len("best."):]] for report in reports])
        assert summary["summary"][metric]["mean"] == pytest.approx(mean, rel=1e-12)
        assert summary["summary"][metric]["sd"] == pytest.approx(sd, rel=1e-12)
        assert summary["summary"][metric]["n"] == 3
        assert f"{metric}: " in result.output          # the plain line of each figure
    assert [row["seed"] for row in summary["runs"]] == list(SEEDS)
    assert [row["run"] for row in summary["runs"]] == [str(run) for run in runs]
    assert summary["runs"][1]["figures"]["best.val_nll_per_token"] == \
        reports[1]["best"]["val_nll_per_token"]
    assert {row["method"] for row in summary["runs"]} == {"gfnem"}
    assert "mean ± sd (n=3)" in result.output


def test_summarize_evaluations_and_chosen_metrics(grammar_runs, tmp_path, runner, cli_app):
    from gfnem_cli.engine.provenance import provenance

    evaluations = [run / "test.json" for run in grammar_runs["runs"]]
    figures = [json.loads(path.read_text()) for path in evaluations]
    for payload in figures:                 # every evaluate --json says which code made it
        assert {k: payload[k] for k in ("gfnem_version", "commit")} == provenance()
    out = tmp_path / "summary.json"
    ok(runner, cli_app, "summarize", *evaluations, "--json", out)
    summary = json.loads(out.read_text())
    assert summary["metrics"] == ["sentence_f1", "corpus_f1", "nll_per_token", "perplexity"]
    assert summary["figures_from"] == "evaluation"
    for metric in summary["metrics"]:
        mean, sd = expected([payload[metric] for payload in figures])
        assert summary["summary"][metric]["mean"] == pytest.approx(mean, rel=1e-12)
        assert summary["summary"][metric]["sd"] == pytest.approx(sd, rel=1e-12)
    assert [row["run"] for row in summary["runs"]] == [str(r) for r in grammar_runs["runs"]]

    ok(runner, cli_app, "summarize", *evaluations, "-m", "precision", "--json", out)
    chosen = json.loads(out.read_text())
    assert chosen["metrics"] == ["precision"]
    assert chosen["summary"]["precision"]["mean"] == pytest.approx(
        statistics.mean(payload["precision"] for payload in figures))


def test_summarize_refusals_are_one_line_and_write_nothing(grammar_runs, tmp_path, runner,
                                                           cli_app):
    runs, out = grammar_runs["runs"], tmp_path / "summary.json"
    refused(runner, cli_app, ["not a gfnem run directory"], "summarize", runs[0],
            grammar_runs["corpus"], "--json", out)
    refused(runner, cli_app, ["'nope'", "missing from run", str(runs[0])], "summarize", *runs,
            "-m", "nope", "--json", out)
    refused(runner, cli_app, ["given twice"], "summarize", runs[0], runs[0] / "test.json")
    refused(runner, cli_app, ["not a run directory, nor an evaluation"], "summarize",
            grammar_runs["recipe"])
    refused(runner, cli_app, ["kind of figures", "--allow-mixed"], "summarize", runs[0],
            runs[1] / "test.json")
    marginal = tmp_path / "marginal"
    ok(runner, cli_app, "train", grammar_runs["recipe"], "--out", marginal, "-q", "--device",
       "cpu", "--set", "method=marginal")
    refused(runner, cli_app, ["method is 'marginal'", "--allow-mixed"], "summarize", *runs,
            marginal, "--json", out)
    assert not out.exists()
    ok(runner, cli_app, "summarize", *runs, marginal, "--allow-mixed", "--json", out)
    assert json.loads(out.read_text())["summary"]["best.val_nll_per_token"]["n"] == 4


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    runner, root = CliRunner(), tmp_path_factory.mktemp("image_summaries")
    shapes = root / "shapes"
    ok(runner, app, "prepare", "shapes", "--out", shapes, "--train", 24, "--valid", 8,
       "--test", 8, "--seed", 3)
    runs = []
    for seed in (0, 1):
        run = root / f"images{seed}"
        ok(runner, app, "train", REPO / "recipes" / "shapes-dvae-gfnem.yaml", "--out", run,
           "--set", f"data.path={shapes}", "--set", "train.steps=2", "--set",
           "train.eval_every=2", "--set", f"train.seed={seed}", *TINY_IMAGES, "-q",
           "--device", "cpu")
        runs.append(run)
    return {"shapes": shapes, "runs": runs}


def test_image_runs_summarize_and_evaluate_with_provenance(image_runs, grammar_runs, tmp_path,
                                                           runner, cli_app):
    from gfnem_cli.engine.provenance import provenance

    runs, out = image_runs["runs"], tmp_path / "summary.json"
    ok(runner, cli_app, "summarize", *runs, "--json", out)
    summary = json.loads(out.read_text())
    values = [json.loads((run / "report.json").read_text())["best"]["val_nll_nats"]
              for run in runs]
    assert summary["summary"]["best.val_nll_nats"]["mean"] == pytest.approx(
        statistics.mean(values))
    assert summary["summary"]["best.val_nll_nats"]["sd"] == pytest.approx(
        statistics.stdev(values))
    assert {row["family"] for row in summary["runs"]} == {"vae"}
    refused(runner, cli_app, ["family is 'vae'", "--allow-mixed"], "summarize",
            grammar_runs["runs"][0], runs[0])
    refused(runner, cli_app, ["'best.val_nll_per_token'", "missing from run", str(runs[0])],
            "summarize", grammar_runs["runs"][0], runs[0], "--allow-mixed")

    ok(runner, cli_app, "evaluate", runs[0], "--data", image_runs["shapes"], "--samples", 4,
       "--json", tmp_path / "nll.json", "--device", "cpu")
    payload = json.loads((tmp_path / "nll.json").read_text())
    assert {k: payload[k] for k in ("gfnem_version", "commit")} == provenance()


def test_plot_writes_a_png_and_refuses_an_unknown_metric(grammar_runs, tmp_path, runner,
                                                         cli_app):
    runs = grammar_runs["runs"]
    # a line torn by a kill in mid-write (and a blank one) are skipped, as on resume
    torn = tmp_path / "torn"
    shutil.copytree(runs[0], torn)
    with (torn / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('\n{"time": 1.0, "kind": "train", "step": 5, "lo')
    out = tmp_path / "curves.png"
    result = ok(runner, cli_app, "plot", *runs[1:], torn, "--metric", "loss", "--metric",
                "val_nll_per_token", "--out", out, "--smooth", 2)
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 1000
    assert "wrote 6 curves of 2 metrics from 3 runs" in result.output
    assert not list(tmp_path.glob(".curves.png.*"))        # no temporary left behind

    missing = tmp_path / "missing.png"
    result = refused(runner, cli_app, ["unknown metric 'nope'", "loss", "val_nll_per_token"],
                     "plot", *runs, "--metric", "nope", "--out", missing)
    assert not missing.exists()
    refused(runner, cli_app, ["not a gfnem run directory"], "plot", grammar_runs["corpus"],
            "--metric", "loss", "--out", missing)
    refused(runner, cli_app, [".png, .pdf or .svg"], "plot", runs[0], "--metric", "loss",
            "--out", tmp_path / "curves.txt")
    # the output is checked before any run is read: a bad run behind a bad output names
    # the output
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused(runner, cli_app, ["a-file"], "plot", tmp_path / "no-run", "--metric", "loss",
            "--out", blocker / "curves.png")
    assert not missing.exists()
