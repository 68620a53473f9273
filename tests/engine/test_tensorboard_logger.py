"""`train.logger: tensorboard`: RUN/tensorboard/ holds the scalars of metrics.jsonl, read back
with TensorBoard's own reader, through a resume too; without the package the run is refused
before anything is written.

Tiny 4-step grammar runs (the grammar CLI tests' recipe) and one tiny image run: the logger
is the engine's, so both families get it from the shared `train` section.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("tensorboard")

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "grammars"))
sys.path.insert(0, str(TESTS / "vae"))
from test_gfnem_train_cli import TINY  # noqa: E402  (the grammar CLI tests' tiny recipe)
from test_vae_cli import TINY as TINY_IMAGES  # noqa: E402  (and the image tests' overrides)

REPO = TESTS.parent
TB = ["--set", "train.logger=tensorboard"]


def ok(runner, app, *args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    root = tmp_path_factory.mktemp("tensorboard")
    ok(CliRunner(), app, "prepare", "synthetic", "--out", root / "data", "--num-sentences", 60,
       "--max-length", 8)
    config = json.loads(json.dumps(TINY))
    config["data"]["path"] = str(root / "data")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train(runner, app, recipe, run, *extra):
    return ok(runner, app, "train", recipe, "--out", run, "-q", "--device", "cpu", *extra)


def logged(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard shows them (superseded steps purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)]
            for tag in reader.Tags()["scalars"]}


def jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The same view of metrics.jsonl: every numeric field of every record, by kind."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key in ("time", "kind", "step") or isinstance(value, bool) \
                    or not isinstance(value, (int, float)):
                continue
            out.setdefault(f"{record['kind']}/{key}", []).append((record["step"], value))
    return out


def assert_same(run: Path) -> dict:
    board, log = logged(run), jsonl_scalars(run)
    assert set(board) == set(log)
    for tag, points in log.items():
        assert [s for s, _ in board[tag]] == [s for s, _ in points], tag
        assert [v for _, v in board[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    return board


def test_event_file_holds_the_scalars_of_metrics_jsonl(tmp_path, recipe, runner, cli_app):
    run = tmp_path / "run"
    train(runner, cli_app, recipe, run, *TB)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    board = assert_same(run)
    assert [s for s, _ in board["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in board["eval/val_nll_per_token"]] == [2, 4]
    assert "eval/val_nll_is_bound" not in board             # a flag is not a scalar

    # resume: the steps after the checkpoint a killed run had logged are superseded. Readers
    # take event files in name order, whose first field is the second of creation: the waits
    # put the killed run's file between the first one and the resume's, as in real life
    from torch.utils.tensorboard import SummaryWriter

    time.sleep(1.05)
    stale = SummaryWriter(str(run / "tensorboard"))
    stale.add_scalar("train/loss", -1e6, 5)
    stale.close()
    time.sleep(1.05)
    train(runner, cli_app, recipe, run, *TB, "--set", "train.steps=6", "--resume")
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 3          # the first run's, the killed one's, the resume's
    board = assert_same(run)
    assert [s for s, _ in board["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert -1e6 not in [v for _, v in board["train/loss"]]


def test_logger_turned_on_at_a_resume_replays_the_history(tmp_path, recipe, runner, cli_app):
    run = tmp_path / "run"
    train(runner, cli_app, recipe, run)
    assert not (run / "tensorboard").exists()              # default: none
    train(runner, cli_app, recipe, run, *TB, "--set", "train.steps=6", "--resume")
    board = assert_same(run)
    assert [s for s, _ in board["train/loss"]] == [1, 2, 3, 4, 5, 6]


def test_image_runs_log_too(tmp_path, runner, cli_app):
    shapes, run = tmp_path / "shapes", tmp_path / "run"
    ok(runner, cli_app, "prepare", "shapes", "--out", shapes, "--train", 16, "--valid", 8,
       "--test", 8, "--seed", 3)
    ok(runner, cli_app, "train", REPO / "recipes" / "shapes-dvae-gfnem.yaml", "--out", run,
       "--set", f"data.path={shapes}", "--set", "train.steps=2", "--set", "train.eval_every=2",
       *TINY_IMAGES, *TB, "-q", "--device", "cpu")
    board = assert_same(run)
    assert "eval/val_nll_nats" in board and "train/loss" in board


def test_missing_package_and_unknown_logger_are_refused_before_any_write(
        tmp_path, recipe, runner, cli_app, monkeypatch):
    run = tmp_path / "run"
    result = runner.invoke(cli_app, ["train", str(recipe), "--out", str(run), "-q", "--device",
                                     "cpu", "--set", "train.logger=mlflow"])
    assert result.exit_code == 2 and "train.logger" in result.output, result.output
    assert "none, tensorboard, wandb" in result.output
    monkeypatch.setitem(sys.modules, "tensorboard", None)         # import now fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = runner.invoke(cli_app, ["train", str(recipe), "--out", str(run), "-q", "--device",
                                     "cpu", *TB])
    assert result.exit_code == 2, result.output
    assert "pip install tensorboard" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not run.exists()
    # a run already there is left as it was by a refused resume
    train(runner, cli_app, recipe, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = runner.invoke(cli_app, ["train", str(recipe), "--out", str(run), "-q", "--device",
                                     "cpu", *TB, "--set", "train.steps=6", "--resume"])
    assert result.exit_code == 2 and "pip install tensorboard" in result.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (run / "tensorboard").exists()
