"""Where jobs run and what they show (issue 13 items 3 and 4), through `gfnem train`.

* A run whose stdout goes to a file writes its header, a timestamped line every --log-every
  steps and every validation (NLL and F1, an example tree) while it runs, not at the end: the
  test reads the log of a live process, then stops it with SIGTERM.
* Validation F1 is in metrics.jsonl and equals `gfnem evaluate`'s on the same sentences;
  `train.select_metric` chooses best.pt by F1 (highest) instead of the NLL; F1 turns off, and a
  recipe that selects by an F1 that cannot be measured is refused before anything is written.
* `--log-every` below 0 is refused (the image family's header: tests/vae/test_vae_cli.py).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from test_gfnem_train_cli import corpus  # noqa: F401  (the tiny synthetic corpus fixture)

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
TINY = {
    "data": {"path": "", "max_train_length": 8},
    "model": {"kind": "npcfg", "nonterminals": 4, "preterminals": 5, "symbol_dim": 16},
    "method": "marginal",
    "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3,
              "eval_batch_size": 8},
}


def write_recipe(folder: Path, corpus: Path, **sections) -> Path:
    config = json.loads(json.dumps(TINY))
    config["data"]["path"] = str(corpus)
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train(runner, app, recipe: Path, out: Path, *extra: str, code: int = 0):
    result = runner.invoke(app, ["train", str(recipe), "--out", str(out), "--device", "cpu",
                                 *extra])
    assert result.exit_code == code, result.output
    return result


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_log_file_gets_lines_and_validations_while_the_run_goes_on(tmp_path, corpus):
    recipe = write_recipe(tmp_path, corpus, train={"steps": 100000, "eval_every": 10,
                                                   "checkpoint_every": 10})
    log, run = tmp_path / "train.log", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as handle:
        job = subprocess.Popen([sys.executable, "-m", "gfnem_cli", "train", str(recipe), "--out",
                                str(run), "--device", "cpu", "--log-every", "5"],
                               stdout=handle, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline, text = time.monotonic() + 240, ""
        while time.monotonic() < deadline and len(re.findall(r" step \d+ validation: ",
                                                             text)) < 2:
            assert job.poll() is None, job.stderr.read()
            time.sleep(0.2)
            text = log.read_text(encoding="utf-8")
        running = job.poll() is None            # the lines came while the job went on
    finally:
        job.send_signal(signal.SIGTERM)         # finishes the step, checkpoints, exits 130
        _, err = job.communicate(timeout=120)
    assert running and job.returncode == 130, err
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert all(STAMP.match(line) for line in lines), lines
    body = [line[20:] for line in lines]
    for start in ("run: ", "device: cpu", "method: marginal", "parameters: model ", "corpus: ",
                  "vocabulary: ", "validation: NLL per token on "):
        assert any(b.startswith(start) for b in body), (start, body[:10])
    steps = [int(m.group(1)) for b in body for m in [re.match(r"step (\d+)/100000 ", b)] if m]
    assert steps[:4] == [5, 10, 15, 20] and all(s % 5 == 0 for s in steps)
    validations = [b for b in body if re.match(r"step \d+ validation: ", b)]
    assert validations[0].startswith("step 10 validation: val_nll_per_token=")
    assert "val_sentence_f1=" in validations[0] and "val_corpus_f1=" in validations[0]
    assert "(best val_nll_per_token=" in validations[0]
    example = [b for b in body if b.startswith("step 10 validation example")]
    assert len(example) == 2 and example[0].count("(") == example[0].count(")") > 1
    assert "gold: ((" in example[1]


def test_validation_f1_is_logged_and_is_what_evaluate_reports(tmp_path, corpus, runner,
                                                              cli_app):
    run = tmp_path / "run"
    result = train(runner, cli_app, write_recipe(tmp_path, corpus), run)
    assert "bracketing F1 on the first" in result.output and "(viterbi decoding)" in result.output
    evals = records(run, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 <= r[k] <= 100 for r in evals for k in ("val_sentence_f1", "val_corpus_f1"))
    assert all("time" in r and "elapsed_s" in r for r in records(run, "train") + evals)
    report = tmp_path / "valid.json"
    done = runner.invoke(cli_app, ["evaluate", str(run), "--data", str(corpus), "--split", "valid",
                                   "--checkpoint", "last", "--device", "cpu", "--json",
                                   str(report)])
    assert done.exit_code == 0, done.output
    figures = json.loads(report.read_text())
    assert evals[-1]["val_sentence_f1"] == pytest.approx(figures["sentence_f1"], abs=1e-3)
    assert evals[-1]["val_corpus_f1"] == pytest.approx(figures["corpus_f1"], abs=1e-3)


def test_select_metric_chooses_best_by_the_highest_f1(tmp_path, corpus, runner, cli_app):
    run = tmp_path / "run"
    # 30 steps: on this corpus the F1 peaks at step 18 while the NLL is lowest at step 10
    recipe = write_recipe(tmp_path, corpus, train={"steps": 30, "eval_every": 2,
                                                   "select_metric": "val_corpus_f1"})
    result = train(runner, cli_app, recipe, run)
    evals = records(run, "eval")
    f1 = [r["val_corpus_f1"] for r in evals]
    best = evals[f1.index(max(f1))]["step"]               # the first of the highest
    report = json.loads((run / "report.json").read_text())
    assert report["select_metric"] == "val_corpus_f1" and report["best_step"] == best
    assert f"best val_corpus_f1 {max(f1):.2f} at step {best}" in result.output
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=False)["step"] == best


def test_f1_can_be_turned_off_and_capped(tmp_path, corpus, runner, cli_app):
    off = tmp_path / "off"
    result = train(runner, cli_app, write_recipe(tmp_path, corpus), off, "--set",
                   "train.valid_f1=false")
    assert "no F1 (train.valid_f1: false)" in result.output
    assert not any("val_sentence_f1" in r for r in records(off, "eval"))
    capped = tmp_path / "capped"
    result = train(runner, cli_app, write_recipe(tmp_path, corpus), capped, "-q", "--set",
                   "data.max_valid_f1_sentences=3", "--set", "data.max_valid_sentences=5")
    assert "val_sentence_f1" in records(capped, "eval")[-1]


def test_selecting_by_an_f1_that_cannot_be_measured_is_refused_before_any_write(
        tmp_path, corpus, runner, cli_app):
    run = tmp_path / "run"
    result = train(runner, cli_app, write_recipe(tmp_path, corpus), run, "--set",
                   "train.select_metric=val_sentence_f1", "--set", "train.valid_f1=false",
                   code=2)
    assert "train.valid_f1" in result.output and not run.exists()
    text = tmp_path / "raw.txt"
    text.write_text("the dog saw a cat\na cat saw the dog in the park\n" * 4, encoding="utf-8")
    done = runner.invoke(cli_app, ["prepare", "text", str(text), "--out", str(tmp_path / "t")])
    assert done.exit_code == 0, done.output
    on_text = write_recipe(tmp_path, tmp_path / "t",
                           data={"train_split": "test", "valid_split": "test"})
    result = train(runner, cli_app, on_text, run, "--set", "train.select_metric=val_corpus_f1",
                   code=2)
    assert "no gold trees" in result.output and not run.exists()
    result = train(runner, cli_app, on_text, run, "--set", "train.steps=2")   # NLL: fine
    assert "no F1 (no gold trees)" in result.output
    assert not any("val_corpus_f1" in r for r in records(run, "eval"))


def test_log_every_below_zero_is_refused(tmp_path, corpus, runner, cli_app):
    run = tmp_path / "run"
    result = train(runner, cli_app, write_recipe(tmp_path, corpus), run, "--log-every", "-1",
                   code=2)
    assert "--log-every must be at least 0" in result.output and not run.exists()



def test_header_warns_when_unk_never_occurs_in_training_but_does_in_validation():
    from types import SimpleNamespace

    from grammars.recipe import GRAMMAR_DEFAULTS
    from grammars.run import describe

    config = json.loads(json.dumps(GRAMMAR_DEFAULTS))
    config["train"]["valid_f1"] = False

    def header(train_rate, valid_rate):
        corpus = SimpleNamespace(path="c", sizes={"train": 3, "valid": 2}, vocab=list("abc"),
                                 manifest={"kind": "ptb", "splits": {
                                     "train": {"unk_rate": train_rate},
                                     "valid": {"unk_rate": valid_rate}}})
        return describe(config, corpus, [[1, 2], [1, 2, 3]], 2, None, None, None)

    warned = [line for line in header(0.0, 0.106) if line.startswith("warning:")]
    assert len(warned) == 1 and "10.60%" in warned[0] and "--vocab-size" in warned[0]
    assert not [line for line in header(0.079, 0.106) if line.startswith("warning:")]
    assert not [line for line in header(0.0, 0.0) if line.startswith("warning:")]
