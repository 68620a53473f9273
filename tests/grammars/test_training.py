"""Training end to end through the CLI: exact resume, interruption, non-finite losses, errors,
and the trained run's parse / sample / evaluate."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gfnem_cli.app import app

TINY = ["--set", "model.nonterminals=4", "--set", "model.preterminals=6",
        "--set", "model.symbol_dim=16", "--set", "train.batch_size=8",
        "--set", "train.eval_every=3", "--set", "train.checkpoint_every=2",
        "--set", "data.max_valid_sentences=16"]


@pytest.fixture(scope="module")
def corpus(synthetic_corpus) -> Path:
    return synthetic_corpus(160, 12)


def train(run: Path, corpus: Path, steps: int, *extra: str) -> "object":
    result = CliRunner().invoke(app, ["train", "recipes/synthetic-npcfg.yaml", "--out", str(run),
                                      "--quiet", "--set", f"data.path={corpus}",
                                      "--set", f"train.steps={steps}", *TINY, *extra])
    return result


def final_model(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["method"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])


def test_resume_continues_exactly(corpus, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(straight, corpus, 8).exit_code == 0
    assert train(split, corpus, 4).exit_code == 0
    result = train(split, corpus, 8, "--resume")
    assert result.exit_code == 0, result.output
    a, b = final_model(straight), final_model(split)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    steps = [json.loads(l)["step"] for l in (split / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == list(range(1, 9)), "metrics.jsonl must hold each step once after a resume"


def test_a_decaying_learning_rate_resumes_where_it_stopped(corpus, tmp_path):
    """train.lr_decay is a function of the update count, so a resumed run takes the same
    rates (and so the same parameters) as one that was never stopped. The horizon is explicit:
    by default it is train.steps, which the resume changes."""
    decay = ["--set", "train.lr_decay=cosine", "--set", "train.lr_warmup=2",
             "--set", "train.lr_final=0.1", "--set", "train.lr_horizon=8"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(straight, corpus, 8, *decay).exit_code == 0
    assert train(split, corpus, 4, *decay).exit_code == 0
    result = train(split, corpus, 8, "--resume", *decay)
    assert result.exit_code == 0, result.output
    a, b = final_model(straight), final_model(split)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rates = [json.loads(l)["lr"] for l in (split / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    base = 2e-3                                      # recipes/synthetic-npcfg.yaml's train.lr
    expected = [base * 0.5, base] + [base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 6)))
                                     for k in range(0, 6)]
    assert rates == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("setting, message", [
    ("train.lr_decay=exponential", "train.lr_decay"), ("train.lr_final=1.5", "train.lr_final"),
    ("train.lr_warmup=-1", "train.lr_warmup"), ("train.lr_final=0.1", "train.lr_decay is constant"),
    ("train.lr_horizon=50", "train.lr_decay is constant")])
def test_a_bad_learning_rate_schedule_is_refused_before_any_write(corpus, tmp_path, setting,
                                                                   message):
    result = train(tmp_path / "r", corpus, 2, "--set", setting)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_a_schedule_on_a_method_that_would_ignore_it_is_refused(corpus, tmp_path):
    result = CliRunner().invoke(app, ["train", "recipes/synthetic-shape-ebm.yaml", "--out",
                                      str(tmp_path / "r"), "--set", f"data.path={corpus}",
                                      "--set", "train.lr_warmup=5"])
    assert result.exit_code == 2 and "keeps Adam at train.lr" in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_run_directory_refuses_restart_and_foreign_data(corpus, tmp_path):
    run = tmp_path / "run"
    assert train(run, corpus, 2).exit_code == 0
    again = train(run, corpus, 2)
    assert again.exit_code == 2 and "already holds a run" in again.output
    other = tmp_path / "other"
    CliRunner().invoke(app, ["prepare", "synthetic", "--out", str(other), "--num-sentences",
                             "120", "--seed", "5"])
    foreign = train(run, other, 4, "--resume")
    assert foreign.exit_code == 2
    assert "data.path" in foreign.output or "another data set" in foreign.output


def test_unknown_recipe_key_names_the_nearest(corpus, tmp_path):
    result = train(tmp_path / "r", corpus, 2, "--set", "train.batchsize=3")
    assert result.exit_code == 2
    assert "unknown key 'train.batchsize'" in result.output and "train.batch_size" in result.output
    assert "Traceback" not in result.output


def test_trained_run_parses_samples_and_evaluates(corpus, tmp_path):
    run = tmp_path / "run"
    assert train(run, corpus, 6).exit_code == 0
    runner = CliRunner()
    text = tmp_path / "in.txt"
    text.write_text("# a comment\nthe dog saw a cat\nunknownword ran\nhe\n", encoding="utf-8")
    out = tmp_path / "parses.txt"
    for decode in ("viterbi", "mbr"):
        result = runner.invoke(app, ["parse", str(run), "--input", str(text), "--out", str(out),
                                     "--decode", decode])
        assert result.exit_code == 0, result.output
        lines = out.read_text().splitlines()   # one line per input line: the comment is ()
        assert len(lines) == 4 and lines[0] == "()"
        assert "unknownword" in lines[2] and lines[3] == "(T he)"
        assert lines[1].count("(NT-") == 4  # a binary tree over 5 words has 4 internal nodes
    result = runner.invoke(app, ["sample", str(run), "--from-model", "-n", "3",
                                 "--brackets-only"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["sample", str(run), "--sentence", "the dog saw a cat", "-n", "2"])
    assert result.exit_code == 0 and "log p(x,z)" in result.output, result.output
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(corpus), "--json",
                                 str(report)])
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert 0 <= figures["sentence_f1"] <= 100 and figures["nll_is_bound"] is False
    assert figures["nll_per_token"] > figures["true_nll_per_token"] > 0
    # the NLL obeys the same length filter as F1
    short = tmp_path / "short.json"
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(corpus), "--max-length",
                                 "6", "--json", str(short)])
    assert result.exit_code == 0, result.output
    from grammars.data.corpus import load_corpus

    lengths = [len(w) for w in load_corpus(corpus).column("test", "words")]
    short_figures = json.loads(short.read_text())
    assert short_figures["nll_sentences"] == sum(1 for n in lengths if 2 <= n <= 6)
    assert short_figures["nll_tokens"] == sum(n + 1 for n in lengths if 2 <= n <= 6)
    # the corpus's own parse file scores the same as evaluating the run directly
    parses = tmp_path / "test.txt"
    runner.invoke(app, ["parse", str(run), "--input", str(corpus), "--out", str(parses)])
    result = runner.invoke(app, ["evaluate", "--data", str(corpus), "--pred", str(parses),
                                 "--json", str(tmp_path / "pred.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "pred.json").read_text())["sentence_f1"] == pytest.approx(
        figures["sentence_f1"])


class _Flaky:
    """A method whose losses are non-finite from a given step on, or that signals Ctrl-C."""

    def __init__(self, bad_from=None, interrupt_at=None):
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.calls, self.bad_from, self.interrupt_at = 0, bad_from, interrupt_at

    def train_step(self, batch):
        from gfnem_cli.engine.trainer import NonFiniteLoss

        self.calls += 1
        if self.interrupt_at == self.calls:
            os.kill(os.getpid(), signal.SIGINT)
        if self.bad_from is not None and self.calls >= self.bad_from:
            raise NonFiniteLoss
        with torch.no_grad():
            self.weight += 1
        return {"loss": float(self.weight.detach())}

    def validate(self):
        return {"val_nll_per_token": -float(self.weight.detach())}

    def state_dict(self):
        return {"weight": self.weight.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.weight.copy_(state["weight"])


class _Schedule:
    def epoch_batches(self, epoch):
        return list(range(5))


def _trainer(tmp_path, method, steps=50):
    from gfnem_cli.engine.trainer import Trainer, TrainerOptions

    options = TrainerOptions(steps=steps, eval_every=1000, checkpoint_every=2,
                             max_nonfinite_in_a_row=3, select_metric="val_nll_per_token",
                             show_progress=False)
    return Trainer(tmp_path, method, _Schedule(), options, {}, "fp")


def test_repeated_non_finite_losses_stop_with_last_good_checkpoint(tmp_path):
    from gfnem_cli.engine.errors import GfnemError

    trainer = _trainer(tmp_path, _Flaky(bad_from=5))
    with pytest.raises(GfnemError, match="non-finite"):
        trainer.fit()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 4 and float(state["method"]["weight"]) == 4.0


def test_a_single_non_finite_loss_is_skipped_and_counted(tmp_path):
    method = _Flaky(bad_from=3)
    method.train_step_orig = method.train_step

    def once(batch):  # only the third call is bad
        if method.calls == 2:
            method.calls += 1
            from gfnem_cli.engine.trainer import NonFiniteLoss
            raise NonFiniteLoss
        method.bad_from = None
        return method.train_step_orig(batch)

    method.train_step = once
    report = _trainer(tmp_path, method, steps=6).fit()
    assert report["nonfinite_steps_skipped"] == 1 and float(method.weight.detach()) == 5.0


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes(tmp_path):
    from gfnem_cli.engine.trainer import TrainingInterrupted

    trainer = _trainer(tmp_path, _Flaky(interrupt_at=3), steps=10)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.step == 3
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 3 and float(state["method"]["weight"]) == 3.0
    resumed = _trainer(tmp_path, _Flaky(), steps=10)
    resumed.resume()
    assert resumed.fit()["steps"] == 10 and float(resumed.method.weight.detach()) == 10.0
