"""The image path through the command line, on a tiny shapes set (CPU, ~30 s in all).

prepare shapes -> train a few steps -> sample (prior PNG, reconstructions) -> parse (codes)
-> evaluate (JSON); resume exactness (k steps + resume k steps == 2k steps, tensor-equal);
bad input to the new commands (one line, exit 2, nothing written); each baseline trains.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.channels=8", "--set", "sampler.channels=8", "--set", "train.batch_size=8",
        "--set", "data.max_valid_images=8", "--set", "em.valid_samples=2",
        "--set", "train.eval_batch_size=8", "--set", "baseline.encoder_channels=8"]


def invoke(runner, app, *args):
    return runner.invoke(app, [str(a) for a in args])


def ok(runner, app, *args):
    result = invoke(runner, app, *args)
    assert result.exit_code == 0, result.output
    return result


def refused(runner, app, needle, *args):
    result = invoke(runner, app, *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    out = tmp_path_factory.mktemp("img") / "shapes"
    ok(CliRunner(), app, "prepare", "shapes", "--out", out, "--train", 48, "--valid", 8,
       "--test", 8, "--seed", 3)
    return out


def train(runner, app, recipe, out, data, steps, *extra):
    return ok(runner, app, "train", REPO / "recipes" / recipe, "--out", out, "--set",
              f"data.path={data}", "--set", f"train.steps={steps}", "--set",
              "train.eval_every=2", "--set", "train.checkpoint_every=2", *TINY, *extra, "-q",
              "--device", "cpu")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_prepare_train_sample_parse_evaluate(tmp_path, shapes, runner, cli_app):
    manifest = json.loads((shapes / "manifest.json").read_text())
    assert manifest["kind"] == "shapes" and manifest["splits"]["train"]["images"] == 48
    run = tmp_path / "run"
    result = train(runner, cli_app, "shapes-dvae-gfnem.yaml", run, shapes, 4)
    assert "model updates" in result.output and "nats/image" in result.output
    assert (run / "data_manifest.json").is_file() and (run / "checkpoints" / "best.pt").is_file()
    config = (run / "config.yaml").read_text()
    assert "family: vae" in config

    ok(runner, cli_app, "sample", run, "-n", 16, "--out", tmp_path / "grid.png")
    assert png_size(tmp_path / "grid.png") == (8 * 30 + 2, 2 * 30 + 2)   # 8 columns of 28+2
    ok(runner, cli_app, "sample", run, "--input", shapes, "--split", "test", "-n", 3,
       "--per-image", 2, "--out", tmp_path / "recon.png")
    assert png_size(tmp_path / "recon.png") == (3 * 30 + 2, 3 * 30 + 2)  # input + 2 per row

    ok(runner, cli_app, "parse", run, "--input", shapes, "--out", tmp_path / "codes.jsonl",
       "--samples", 3)
    rows = [json.loads(line) for line in (tmp_path / "codes.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and [r["index"] for r in rows] == list(range(8))
    assert all(len(r["codes"]) == 4 and all(0 <= c < 4 for row in r["codes"] for c in row)
               for r in rows)
    assert all(r["log_joint"] < 0 for r in rows)

    ok(runner, cli_app, "evaluate", run, "--data", shapes, "--samples", 120, "--json",
       tmp_path / "nll.json")
    figures = json.loads((tmp_path / "nll.json").read_text())
    for key in ("nll_nats", "nll_stderr", "bits_per_dim", "nll_is_bound", "samples",
                "nll_nats_m1", "nll_nats_m100", "true_nll"):
        assert key in figures, key
    assert figures["samples"] == 120 and figures["nll_is_bound"] is True
    assert figures["true_nll"] == pytest.approx(manifest["true_nll"]["test"])
    assert figures["nll_nats"] > figures["true_nll"]          # an untrained model: far above
    assert figures["nll_nats"] <= figures["nll_nats_m1"] + 1e-6   # more samples: tighter
    assert figures["bits_per_dim"] == pytest.approx(
        figures["nll_nats"] / (784 * torch.log(torch.tensor(2.0)).item()))

    # a quick look at the first 3 images: the floor is theirs, the report says so
    result = ok(runner, cli_app, "evaluate", run, "--data", shapes, "--samples", 20,
                "--max-images", 3, "--json", tmp_path / "part.json")
    part = json.loads((tmp_path / "part.json").read_text())
    assert part["num_images"] == 3 and part["split_images"] == 8
    assert "the first of 8" in result.output
    from vae.data.shapes import ShapesModel
    from vae.data.dataset import load_image_set
    first = load_image_set(shapes).images("test")[:3]
    floor = -ShapesModel.from_options(manifest["model"]).log_marginal(first).mean()
    assert part["true_nll"] == pytest.approx(float(floor))
    refused(runner, cli_app, "--max-images", "evaluate", run, "--data", shapes,
            "--max-images", -1)


def _method_tensors(run: Path) -> dict:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["method"]
    flat = {}

    def walk(prefix, node):
        if isinstance(node, torch.Tensor):
            flat[prefix] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}/{key}", value)
        elif isinstance(node, (list, tuple)):
            for key, value in enumerate(node):
                walk(f"{prefix}/{key}", value)
    walk("", state)
    return flat


@pytest.mark.parametrize("recipe", ["shapes-dvae-gfnem.yaml", "shapes-gumbel.yaml"])
def test_resume_is_exact(tmp_path, shapes, runner, cli_app, recipe):
    whole, half = tmp_path / "whole", tmp_path / "half"
    train(runner, cli_app, recipe, whole, shapes, 6)
    train(runner, cli_app, recipe, half, shapes, 3, "--set", "train.checkpoint_every=3")
    ok(runner, cli_app, "train", REPO / "recipes" / recipe, "--out", half, "--set",
       f"data.path={shapes}", "--set", "train.steps=6", "--set", "train.eval_every=2",
       "--set", "train.checkpoint_every=3", *TINY, "-q", "--device", "cpu", "--resume")
    a, b = _method_tensors(whole), _method_tensors(half)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [[r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                       .splitlines()) if r["kind"] == "train"]
              for run in (whole, half)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


@pytest.mark.parametrize("method", ["vqvae", "gumbel", "reinforce", "exact_em"])
def test_each_baseline_trains_through_the_cli(tmp_path, shapes, runner, cli_app, method):
    run = tmp_path / method
    extra = ["--set", f"method={method}"]
    train(runner, cli_app, "shapes-gumbel.yaml", run, shapes, 2, *extra,
          *(["--set", "model.grid=[2, 2]"] if method == "exact_em" else []))
    evals = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals and evals[-1]["val_nll_nats"] > 0
    ok(runner, cli_app, "evaluate", run, "--data", shapes, "--samples", 4, "--json",
       tmp_path / "e.json")
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["nll_is_bound"] is (method != "exact_em")
    assert figures["samples"] == (1 if method == "vqvae" else 4)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, shapes, runner, cli_app):
    out = tmp_path / "new"
    refused(runner, cli_app, "--train must be at least 0", "prepare", "shapes", "--out", out,
            "--train", -1)
    refused(runner, cli_app, "unknown --protocol", "prepare", "mnist", tmp_path, "--out", out,
            "--protocol", "fuzzy")
    refused(runner, cli_app, "missing file", "prepare", "mnist", tmp_path / "none", "--out", out,
            "--protocol", "static")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("x")
    refused(runner, cli_app, "refusing to overwrite", "prepare", "shapes", "--out",
            tmp_path / "keep")
    assert not out.exists() and (tmp_path / "keep" / "mine.txt").read_text() == "x"

    run = tmp_path / "run"
    train(runner, cli_app, "shapes-gumbel.yaml", run, shapes, 2)
    before = sorted(p.name for p in tmp_path.iterdir())
    refused(runner, cli_app, ".png", "sample", run, "--out", tmp_path / "grid.jpg")
    refused(runner, cli_app, "--out FILE.png", "sample", run)
    refused(runner, cli_app, "-n must be at least 1", "sample", run, "-n", 0, "--out",
            tmp_path / "g.png")
    refused(runner, cli_app, "no split", "sample", run, "--input", shapes, "--split", "nope",
            "--out", tmp_path / "g.png")
    refused(runner, cli_app, "not a prepared image set", "parse", run, "--input",
            tmp_path / "keep", "--out", tmp_path / "c.jsonl")
    refused(runner, cli_app, "--samples must be at least 1", "parse", run, "--input", shapes,
            "--out", tmp_path / "c.jsonl", "--samples", 0)
    refused(runner, cli_app, "is a directory", "evaluate", run, "--data", shapes, "--json",
            tmp_path / "keep")
    refused(runner, cli_app, "trained RUN", "evaluate", "--data", shapes)
    refused(runner, cli_app, "prepared image set", "evaluate", run, "--data", tmp_path / "keep")
    refused(runner, cli_app, "data.valid_split='nope'", "train", REPO / "recipes" / "shapes-gumbel.yaml",
            "--out", tmp_path / "r2", "--set", "data.valid_split=nope", "--set",
            f"data.path={shapes}")
    refused(runner, cli_app, "model.num_codes", "train", REPO / "recipes" / "shapes-gumbel.yaml",
            "--out", tmp_path / "r3", "--set", "model.num_codes=1")
    refused(runner, cli_app, "keeps Adam at train.lr", "train",           # would be ignored
            REPO / "recipes" / "shapes-gumbel.yaml", "--out", tmp_path / "r4", "--set",
            "train.lr_decay=cosine", "--set", f"data.path={shapes}")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_grammar_options_on_an_image_run_are_refused(tmp_path, shapes, runner, cli_app):
    """An option the image path would ignore is refused, not silently dropped (exit 0 with
    an answer that did not use it)."""
    run = tmp_path / "run"
    train(runner, cli_app, "shapes-gumbel.yaml", run, shapes, 2)
    for args in (["evaluate", run, "--data", shapes, "--pred", tmp_path / "p.txt"],
                 ["evaluate", run, "--data", shapes, "--baseline", "right"],
                 ["evaluate", run, "--data", shapes, "--max-length", 10],
                 ["parse", run, "--input", shapes, "--out", tmp_path / "c.jsonl", "--decode",
                  "viterbi"],
                 ["sample", run, "--out", tmp_path / "g.png", "--max-length", 5]):
        refused(runner, cli_app, "grammar-only", *args)
    assert not (tmp_path / "c.jsonl").exists() and not (tmp_path / "g.png").exists()


def test_every_recipe_resolves():
    from gfnem_cli import families
    from gfnem_cli.engine.config import resolve_config
    from vae.recipe import VAE_DEFAULTS

    names = sorted(p.name for p in (REPO / "recipes").glob("*.yaml")
                   if p.name.startswith(("shapes-", "mnist-")))
    assert len(names) >= 9
    for name in names:
        path = REPO / "recipes" / name
        assert families.family_of_recipe(path, []) == "vae"
        config = resolve_config(VAE_DEFAULTS, path, [])
        if name.startswith("mnist-"):
            assert config["train"]["batch_size"] == 128 and config["train"]["lr"] == 2e-4
            assert config["model"]["channels"] == 128
            if config["method"] == "gfnem":
                s = config["sampler"]
                assert (s["lr"], s["log_z_lr"], s["channels"]) == (2e-4, 0.1, 128)
                assert config["em"]["sleep_weight"] == 0.3


def test_an_image_run_opens_with_its_header(tmp_path, shapes, runner, cli_app):
    """Output to a file (not a terminal): the header's lines, timestamped, with the image
    family's data line and the parameters of every module."""
    result = invoke(runner, cli_app, "train", REPO / "recipes" / "shapes-gumbel.yaml", "--out",
                    tmp_path / "run", "--set", f"data.path={shapes}", "--set", "train.steps=2",
                    "--set", "train.eval_every=2", *TINY, "--device", "cpu")
    assert result.exit_code == 0, result.output
    body = [line[20:] for line in result.output.splitlines()
            if line[:4].isdigit() and line[4] == "-"]
    assert any(b.startswith("images: ") and "28x28" in b and "train 48, validation 8" in b
               for b in body), body
    assert any(b.startswith("parameters: vae ") and "encoder " in b for b in body), body
