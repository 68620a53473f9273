"""The run-directory lifecycle (issue 10): checks before writes, nothing lost, nothing silent.

One test per defect a fault-and-bad-input pass found in `gfnem train` and the files it
leaves; each failed before the fix. A refused command must leave every byte of the run as it
was (`tree_digest`), and every error is one line with exit code 2.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

TINY = {
    "data": {"path": "", "max_train_length": 8, "max_valid_sentences": 6},
    "model": {"kind": "npcfg", "nonterminals": 4, "preterminals": 5, "symbol_dim": 16},
    "method": "marginal",
    "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3,
              "eval_batch_size": 8},
}


def prepare(runner, app, out: Path, seed: int = 0) -> Path:
    result = runner.invoke(app, ["prepare", "synthetic", "--out", str(out), "--num-sentences",
                                 "60", "--max-length", "8", "--seed", str(seed)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    return prepare(CliRunner(), app, tmp_path_factory.mktemp("synthetic") / "data")


def write_recipe(tmp_path: Path, corpus: Path, **train) -> Path:
    config = json.loads(json.dumps(TINY))
    config["data"]["path"] = str(corpus)
    config["train"].update(train)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train(runner, app, recipe: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", str(recipe), "--out", str(out), "-q", "--device", "cpu",
                               *extra])


def tree_digest(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and result.exception is None or isinstance(
        result.exception, SystemExit), text
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def train_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


# ------------------------------------------------------------------ defect 1


def test_refused_resume_on_another_corpus_changes_nothing(tmp_path, runner, cli_app):
    first = prepare(runner, cli_app, tmp_path / "corpY")
    recipe = write_recipe(tmp_path, first)
    run = tmp_path / "runY"
    assert train(runner, cli_app, recipe, run).exit_code == 0
    before = tree_digest(run)
    prepare(runner, cli_app, tmp_path / "corpY", seed=7)      # same path, other sentences
    result = train(runner, cli_app, recipe, run, "--set", "train.steps=9", "--resume")
    assert_one_line_error(result, "another data set")
    assert tree_digest(run) == before


# ------------------------------------------------------------------ defect 3


@pytest.mark.parametrize("key,value", [("data.valid_split", "vaild"),
                                       ("data.train_split", "trian")])
def test_a_split_the_recipe_names_must_exist(tmp_path, corpus, runner, cli_app, key, value):
    result = train(runner, cli_app, write_recipe(tmp_path, corpus), tmp_path / "run",
                   "--set", f"{key}={value}")
    assert_one_line_error(result, key, "no such split", "valid (")
    assert not (tmp_path / "run").exists()


def test_an_empty_validation_split_is_refused(tmp_path, runner, cli_app):
    result = runner.invoke(cli_app, ["prepare", "synthetic", "--out", str(tmp_path / "c"),
                                     "--num-sentences", "40", "--ratios", "0.9,0,0.1"])
    assert result.exit_code == 0, result.output
    result = train(runner, cli_app, write_recipe(tmp_path, tmp_path / "c"), tmp_path / "run")
    assert_one_line_error(result, "data.valid_split", "empty")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ defect 5


def test_a_run_killed_before_its_first_checkpoint_resumes_and_restarts_cleanly(
        tmp_path, corpus, runner, cli_app):
    recipe = write_recipe(tmp_path, corpus)
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert train(runner, cli_app, recipe, straight).exit_code == 0
    assert train(runner, cli_app, recipe, run).exit_code == 0
    # what a kill before the first checkpoint leaves: the start files and some metrics
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "best.pt").unlink()
    (run / "report.json").unlink()
    result = train(runner, cli_app, recipe, run, "--resume")
    assert result.exit_code == 0, result.output
    assert train_steps(run) == list(range(1, 7))               # no step logged twice
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    for key in a["method"]["model"]:
        assert torch.equal(a["method"]["model"][key], b["method"]["model"][key]), key
    (run / "checkpoints" / "last.pt").unlink()                 # and a fresh start replaces
    assert train(runner, cli_app, recipe, run).exit_code == 0  # the old log, not appends
    assert train_steps(run) == list(range(1, 7))


# ------------------------------------------------------------------ defect 6


@pytest.mark.parametrize("damage", ["torn", "garbage"])
def test_resume_survives_a_torn_metrics_line(tmp_path, corpus, runner, cli_app, damage):
    recipe = write_recipe(tmp_path, corpus)
    run = tmp_path / "run"
    assert train(runner, cli_app, recipe, run).exit_code == 0
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "step": 7, "lo' if damage == "torn" else "\x00\x01[]\n")
    result = train(runner, cli_app, recipe, run, "--set", "train.steps=9", "--resume")
    assert result.exit_code == 0, result.output
    assert train_steps(run) == list(range(1, 10))
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


# ------------------------------------------------------------------ defect 7


def test_the_printed_resume_hint_keeps_the_overrides(tmp_path, corpus):
    """SIGINT a real process; the command it prints, run as printed, ends at the asked steps."""
    recipe = write_recipe(tmp_path, corpus, steps=100000, checkpoint_every=50, eval_every=1000)
    run = tmp_path / "run"
    gfnem = [sys.executable, "-m", "gfnem_cli"]
    process = subprocess.Popen(gfnem + ["train", str(recipe), "--out", str(run), "-q",
                                        "--device", "cpu", "--set", "train.steps=40000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    hint = re.search(r"continue with `([^`]+)`", " ".join(err.split()))
    assert hint, err
    command = shlex.split(hint.group(1))
    assert command[:2] == ["gfnem", "train"] and "train.steps=40000" in command
    assert command[-1] == "--resume"
    # run what it says, with the step budget lowered to just past the interruption
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"]
    again = gfnem + command[1:] + ["-q", "--set", f"train.steps={step + 2}"]
    again.remove("--set"), again.remove("train.steps=40000")
    done = subprocess.run(again, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "report.json").read_text())["steps"] == step + 2


# ------------------------------------------------------------------ defect 8


def test_a_run_ending_in_non_finite_steps_checkpoints_and_says_so(tmp_path, monkeypatch,
                                                                  corpus, runner, cli_app):
    from gfnem_cli.engine.trainer import NonFiniteLoss
    from grammars.training import exact_marginal as exact_em
    original = exact_em.ExactMarginalMethod.train_step
    calls = {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] > 4:           # the last two of six steps are non-finite
            raise NonFiniteLoss
        return original(self, batch)

    monkeypatch.setattr(exact_em.ExactMarginalMethod, "train_step", flaky)
    run = tmp_path / "run"
    result = train(runner, cli_app, write_recipe(tmp_path, corpus, checkpoint_every=100), run)
    assert result.exit_code == 0, result.output
    assert "non-finite" in result.output
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 6 and state["nonfinite_total"] == 2
    report = json.loads((run / "report.json").read_text())
    assert report["ended_on_nonfinite_steps"] == 2
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in the log"))


def test_metrics_lines_are_strict_json_with_a_time(tmp_path):
    from gfnem_cli.engine.trainer import Trainer, TrainerOptions

    trainer = Trainer(tmp_path, None, None, TrainerOptions(steps=1), {}, "fp")
    trainer._log({"kind": "eval", "step": 1, "val": float("nan"), "bound": float("inf")})
    line = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(line, parse_constant=lambda name: pytest.fail(name))
    assert record["val"] is None and record["bound"] is None and record["time"] > 0


# ------------------------------------------------------------------ defect 9 (train's part)


def test_out_naming_a_file_is_refused(tmp_path, corpus, runner, cli_app):
    target = tmp_path / "afile"
    target.write_text("keep me")
    assert_one_line_error(train(runner, cli_app, write_recipe(tmp_path, corpus), target),
                          "names a file")
    assert target.read_text() == "keep me"


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch, corpus, runner, cli_app):
    from gfnem_cli.engine import files

    recipe = write_recipe(tmp_path, corpus)
    run = tmp_path / "run"
    assert train(runner, cli_app, recipe, run).exit_code == 0
    before = tree_digest(run / "checkpoints")
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith(".pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", full)
    result = train(runner, cli_app, recipe, run, "--set", "train.steps=9", "--resume")
    assert_one_line_error(result, "No space left on device", ".pt")
    assert tree_digest(run / "checkpoints") == before        # no torn or stray file
    monkeypatch.undo()
    result = train(runner, cli_app, recipe, run, "--set", "train.steps=9", "--resume")
    assert result.exit_code == 0, result.output


def test_a_read_only_output_is_refused_before_any_work(tmp_path, monkeypatch, corpus, runner,
                                                       cli_app):
    from gfnem_cli.engine import files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files, "create_exclusive", read_only)
    result = train(runner, cli_app, write_recipe(tmp_path, corpus), tmp_path / "run")
    assert_one_line_error(result, "Read-only file system")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["not yaml", "a list", "bad value", "other model"])
def test_a_damaged_run_config_is_one_line_for_every_command(tmp_path, corpus, runner, cli_app,
                                                            damage):
    recipe = write_recipe(tmp_path, corpus)
    run = tmp_path / "run"
    assert train(runner, cli_app, recipe, run).exit_code == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    texts = {"not yaml": "train: [unclosed\n", "a list": "- 1\n- 2\n"}
    if damage == "bad value":
        config["model"]["nonterminals"] = "many"
    if damage == "other model":
        config["model"]["nonterminals"] = 5          # valid, but not what the checkpoint holds
    (run / "config.yaml").write_text(texts.get(damage) or yaml.safe_dump(config))
    before = tree_digest(run)
    for command in (["evaluate", str(run), "--data", str(corpus)],
                    ["parse", str(run), "--input", str(corpus), "--out",
                     str(tmp_path / "p.txt")],
                    ["sample", str(run), "--sentence", "a b c", "-n", "1"]):
        assert_one_line_error(runner.invoke(cli_app, command), "config.yaml")
    assert tree_digest(run) == before


# ------------------------------------------------------------------ defect 15


def test_checkpoints_are_as_readable_as_the_other_run_files(tmp_path, corpus, runner, cli_app):
    run = tmp_path / "run"
    assert train(runner, cli_app, write_recipe(tmp_path, corpus), run).exit_code == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.rglob("*") if p.is_file()}
    assert modes["last.pt"] == modes["config.yaml"] == modes["metrics.jsonl"], modes


def test_resume_with_fewer_steps_than_done_is_refused_and_keeps_the_config(
        tmp_path, corpus, runner, cli_app):
    recipe = write_recipe(tmp_path, corpus)
    run = tmp_path / "run"
    assert train(runner, cli_app, recipe, run).exit_code == 0
    before = tree_digest(run)
    result = train(runner, cli_app, recipe, run, "--set", "train.steps=3", "--resume")
    assert_one_line_error(result, "already at step 6")
    assert tree_digest(run) == before


def test_run_info_records_what_made_the_run_and_each_resume(tmp_path, corpus, runner, cli_app):
    recipe = write_recipe(tmp_path, corpus)
    run = tmp_path / "run"
    assert train(runner, cli_app, recipe, run).exit_code == 0
    assert train(runner, cli_app, recipe, run, "--set", "train.steps=8", "--resume").exit_code == 0
    info = json.loads((run / "run_info.json").read_text())
    assert info["torch"] == torch.__version__ and info["started"]["device"] == "cpu"
    assert [r["from_step"] for r in info["resumes"]] == [6]


def test_messages_stay_one_line_in_a_narrow_pipe(tmp_path, corpus):
    """An error, a warning or a note is one line however narrow the terminal: grep sees it."""
    missing = tmp_path / ("a-rather-long-folder-name-" * 4) / "recipe.yaml"
    env = {**os.environ, "COLUMNS": "40", "TERM": "dumb"}
    done = subprocess.run([sys.executable, "-m", "gfnem_cli", "train", str(missing), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], done.stderr
    latin = tmp_path / ("a-long-name-for-a-text-file-" * 3 + ".txt")
    latin.write_bytes("the caf\u00e9 is open\nthe dog saw a cat\n".encode("latin-1"))
    warned = subprocess.run([sys.executable, "-m", "gfnem_cli", "prepare", "text", str(latin),
                             "--out", str(tmp_path / "c")], capture_output=True, text=True,
                            env=env, timeout=60)
    assert warned.returncode == 0, warned.stderr
    warnings = [line for line in warned.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), warned.stderr
    assert str(latin) in warnings[0] and "latin-1" in warnings[0]


def test_progress_goes_to_a_file_as_timestamped_lines(tmp_path, corpus):
    """A cluster job's log gets a line every few steps and after each validation, not one
    truncated bar at the end."""
    recipe = write_recipe(tmp_path, corpus, steps=20, eval_every=10)
    done = subprocess.run([sys.executable, "-m", "gfnem_cli", "train", str(recipe), "--out",
                           str(tmp_path / "run"), "--device", "cpu"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stamped = [line for line in done.stdout.splitlines()
               if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)]
    steps = [line for line in stamped if " step " in line and "/20 " in line]
    assert len(steps) == 20 and "loss=" in steps[-1] and "eta" in steps[-1], done.stdout
    assert sum("validation: val_nll_per_token=" in line for line in stamped) == 2


def test_a_run_info_that_is_not_a_mapping_does_not_block_a_resume(tmp_path, corpus, runner,
                                                                   cli_app):
    recipe = write_recipe(tmp_path, corpus)
    run = tmp_path / "run"
    assert train(runner, cli_app, recipe, run).exit_code == 0
    (run / "run_info.json").write_text("[1]\n")
    result = train(runner, cli_app, recipe, run, "--set", "train.steps=8", "--resume")
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads((run / "run_info.json").read_text()), dict)


def test_parse_progress_reaches_a_log_file(tmp_path, corpus, runner, cli_app):
    run = tmp_path / "run"
    assert train(runner, cli_app, write_recipe(tmp_path, corpus), run).exit_code == 0
    done = subprocess.run([sys.executable, "-m", "gfnem_cli", "parse", str(run), "--input",
                           str(corpus), "--split", "train", "--out", str(tmp_path / "p.txt"),
                           "--batch-size", "4", "--device", "cpu"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if " parsing: " in line]
    assert len(lines) >= 5 and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", lines[0])
    assert lines[-1].split(" parsing: ")[1].startswith("48/48")
