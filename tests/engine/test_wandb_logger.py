"""`train.logger: wandb`: offline by default, RUN/wandb/ holds one segment whose history, read
back with W&B's own reader (`wandb leet inspect --json`), is metrics.jsonl's scalars, through a
resume too; without the package, or with a WANDB_MODE gfnem does not know, the run is refused
before anything is written.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb")

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "engine"))
from test_tensorboard_logger import jsonl_scalars, ok, recipe, train  # noqa: E402,F401

WB = ["--set", "train.logger=wandb"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)


def segments(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*"))


def history(segment: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from the segment's transaction log, as W&B reads it."""
    shown = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json",
                            str(segment)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    out: dict[str, list[tuple[int, float]]] = {}
    for line in shown.stdout.splitlines():
        record = json.loads(line)
        if record.get("type") != "history":
            continue
        item = record["history"]["item"]
        for tag, value in item.items():
            if not tag.startswith("_"):
                out.setdefault(tag, []).append((item["_step"], value))
    return out


def assert_same(run: Path) -> dict:
    [segment] = segments(run)
    logged, log = history(segment), jsonl_scalars(run)
    assert set(logged) == set(log)
    for tag, points in log.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points]), tag
    return logged


def test_offline_segment_holds_the_scalars_of_metrics_jsonl(tmp_path, recipe, runner,
                                                            cli_app):
    run = tmp_path / "run"
    train(runner, cli_app, recipe, run, *WB)
    run_id = (run / "wandb" / "gfnem-run-id").read_text().strip()
    [segment] = segments(run)
    assert segment.name.endswith(run_id)
    logged = assert_same(run)
    assert [s for s, _ in logged["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in logged["eval/val_nll_per_token"]] == [2, 4]
    assert "eval/val_nll_is_bound" not in logged              # a flag is not a scalar

    # a resume replays the kept history into one new segment of the same W&B run
    train(runner, cli_app, recipe, run, *WB, "--set", "train.steps=6", "--resume")
    [segment] = segments(run)
    assert segment.name.endswith(run_id)
    logged = assert_same(run)
    assert [s for s, _ in logged["train/loss"]] == [1, 2, 3, 4, 5, 6]


def test_logger_turned_on_at_a_resume_replays_the_history(tmp_path, recipe, runner, cli_app):
    run = tmp_path / "run"
    train(runner, cli_app, recipe, run)
    assert not (run / "wandb").exists()                        # default: none
    train(runner, cli_app, recipe, run, *WB, "--set", "train.steps=6", "--resume")
    logged = assert_same(run)
    assert [s for s, _ in logged["train/loss"]] == [1, 2, 3, 4, 5, 6]


def test_missing_package_and_unknown_mode_are_refused_before_any_write(
        tmp_path, recipe, runner, cli_app, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    result = runner.invoke(cli_app, ["train", str(recipe), "--out", str(run), "-q", "--device",
                                     "cpu", *WB])
    assert result.exit_code == 2 and "WANDB_MODE" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not run.exists()
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setitem(sys.modules, "wandb", None)                # import now fails
    result = runner.invoke(cli_app, ["train", str(recipe), "--out", str(run), "-q", "--device",
                                     "cpu", *WB])
    assert result.exit_code == 2, result.output
    assert "pip install wandb" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not run.exists()
