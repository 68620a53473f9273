"""`gfnem train` with method gfnem | exact-sampling | mcem, end to end on a tiny synthetic corpus.

Tiny everything (4 nonterminals, a 1-layer d=16 sampler, sentences of <= 8 words) so each
run takes a fraction of a second on a CPU. Exact resume: k steps + `--resume` to 2k equals
2k steps straight (parameters, optimizer states, EM state, chains, metrics). Then the
commands that read a GFlowNet run: `sample --sentence`, `parse --decode sample`, and
`evaluate RUN` with the importance-sampled bound.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

TINY = {
    "data": {"path": "", "max_train_length": 8, "max_valid_sentences": 6},
    "model": {"kind": "npcfg", "nonterminals": 4, "preterminals": 5, "symbol_dim": 16},
    "method": "gfnem",
    "sampler": {"d_model": 16, "num_layers": 1, "num_heads": 2, "temperature": 1.1,
                "local_search_rounds": 1, "local_search_steps": 2},
    "em": {"threshold_max": float("inf"), "threshold_min": float("inf"),
           "mstep_local_search_rounds": 1, "sleep_weight": 1.0, "sleep_max_length": 6,
           "valid_samples": 4},
    "mcem": {"steps": 5},
    "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2,
              "eval_batch_size": 8},
}


@pytest.fixture(scope="module")
def corpus(synthetic_corpus) -> Path:
    return synthetic_corpus(60, 8)


def recipe(tmp_path: Path, corpus: Path, **changes) -> Path:
    config = json.loads(json.dumps(TINY))
    config["data"]["path"] = str(corpus)
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train(runner, app, path: Path, out: Path, *extra: str):
    result = runner.invoke(app, ["train", str(path), "--out", str(out), "-q", "--device", "cpu",
                                 *extra])
    assert result.exit_code == 0, result.output
    return result


def metric_lines(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("items_per_s", "time", "elapsed_s")}
            for line in lines]


def assert_same_state(a, b, path="method"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("kind,method", [("npcfg", "gfnem"), ("ncfg", "gfnem"),
                                         ("ncfg", "mcem"), ("npcfg", "exact-sampling")])
def test_k_steps_then_resume_equals_2k_steps(tmp_path, corpus, runner, cli_app, kind, method):
    path = recipe(tmp_path, corpus, model__kind=kind, method=method)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(runner, cli_app, path, straight)
    train(runner, cli_app, path, resumed, "--set", "train.steps=2")
    train(runner, cli_app, path, resumed, "--set", "train.steps=4", "--resume")
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)
    assert_same_state(a["method"], b["method"])
    assert a["method"]["em"]["model_updates"] == 4          # τ = inf: an M-step every step
    lines_a, lines_b = metric_lines(straight), metric_lines(resumed)
    assert lines_a == lines_b
    train_lines = [x for x in lines_a if x["kind"] == "train"]
    evals = [x for x in lines_a if x["kind"] == "eval"]
    assert len(train_lines) == 4 and len(evals) == 2
    assert evals[-1]["val_nll_is_bound"] is (kind == "ncfg")
    if method == "gfnem":
        assert {"e_loss", "e_loss_ema", "tau", "mean_log_reward", "sleep_nll",
                "e_ls_acceptance", "mstep_ls_acceptance"} <= set(train_lines[-1])
    if method == "mcem":
        assert 0.0 <= train_lines[-1]["mh_acceptance"] <= 1.0
        assert len(a["method"]["estep"]["state"]["keys"]) > 0
        # a uniform-proposal bound is logged but selects no checkpoint
        assert "val_nll_uniform_proposal_bound" in evals[-1]
        assert "val_nll_per_token" not in evals[-1]
        assert not (straight / "checkpoints" / "best.pt").exists()
    else:
        assert (straight / "checkpoints" / "best.pt").exists()


@pytest.mark.parametrize("kind,method", [("npcfg", "gfnem"), ("ncfg", "gfnem"),
                                         ("ncfg", "mcem"), ("npcfg", "exact-sampling")])
def test_summed_labels_mstep_scores_bracketings(tmp_path, corpus, runner, cli_app, kind,
                                                method):
    """Same seed, same first draws: the summed M-step's log p(x, s) exceeds log p(x, z)."""
    first = {}
    for labels in ("sampled", "summed"):
        path = recipe(tmp_path, corpus, model__kind=kind, method=method,
                      em__mstep_labels=labels, train__steps=1)
        train(runner, cli_app, path, tmp_path / labels)
        first[labels] = [x for x in metric_lines(tmp_path / labels) if x["kind"] == "train"][0]
    assert first["summed"]["mstep_log_joint"] > first["sampled"]["mstep_log_joint"] + 1.0
    if method == "gfnem":   # the E-step does not see the option
        assert first["summed"]["e_loss"] == first["sampled"]["e_loss"]


@pytest.mark.parametrize("method", ["gfnem", "marginal"])
def test_training_stops_after_max_model_updates_and_resumes_to_a_higher_cap(
        tmp_path, corpus, runner, cli_app, method):
    # a threshold the untrained sampler's E-loss is above gates the M-step, so the gfnem run
    # takes more steps than updates; the cap ends it well before train.steps
    path = recipe(tmp_path, corpus, method=method, train__steps=200,
                  em__threshold_max=30.0, em__threshold_min=30.0,
                  sampler__local_search_rounds=0, em__mstep_local_search_rounds=0,
                  em__sleep_weight=0.0, train__eval_every=100, train__checkpoint_every=100)
    run = tmp_path / "capped"
    result = train(runner, cli_app, path, run, "--set", "train.max_model_updates=3")
    assert "(3 grammar updates)" in " ".join(result.output.split())
    report = json.loads((run / "report.json").read_text())
    assert report["model_updates"] == 3 and report["steps"] >= 3
    assert report["steps"] == 3 if method == "marginal" else report["steps"] > 3
    lines = metric_lines(run)
    assert lines[-1]["kind"] == "eval"                       # validated at the stop
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == report["steps"]                  # and checkpointed there
    train(runner, cli_app, path, run, "--set", "train.max_model_updates=5", "--resume")
    report = json.loads((run / "report.json").read_text())
    assert report["model_updates"] == 5


def test_gfnem_run_samples_parses_and_evaluates(tmp_path, corpus, runner, cli_app):
    from grammars.run import load_run

    run = tmp_path / "run"
    train(runner, cli_app, recipe(tmp_path, corpus, model__kind="ncfg"), run)
    trained = load_run(run, "cpu")
    assert trained.sampler is not None and not trained.sampler.training
    words = json.loads((run / "vocab.json").read_text())["tokens"][1:5]
    result = runner.invoke(cli_app, ["sample", str(run), "--sentence", " ".join(words), "-n", "3",
                                     "--brackets-only", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "GFlowNet sampler" in result.output and result.output.count("log q =") == 3
    out = tmp_path / "parses.txt"
    result = runner.invoke(cli_app, ["parse", str(run), "--input", str(corpus), "--split", "test",
                                     "--out", str(out), "--decode", "sample", "--samples", "4",
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "report.json"
    result = runner.invoke(cli_app, ["evaluate", "--data", str(corpus), "--split", "test",
                                     "--pred", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(report.read_text())["sentence_f1"] <= 100.0
    result = runner.invoke(cli_app, ["evaluate", str(run), "--data", str(corpus), "--split",
                                     "test", "--decode", "sample", "--samples", "8", "--json",
                                     str(report), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert figures["nll_is_bound"] is True and figures["nll_std_error"] > 0


def test_sampled_decoding_helpers(tmp_path, corpus, runner, cli_app):
    from grammars.binary_trees import BinaryTrees
    from grammars.models.forest_score import forest_structure
    from grammars.run import load_run
    from grammars.inference.sampled_decoding import (best_of_samples, draw_trees_for_decoding,
                                                     sample_span_marginals, sampler_mbr)
    from grammars.inference.tree_draws import sampler_draws

    spans = torch.tensor([[[0, 2], [0, 3]], [[1, 3], [0, 3]], [[0, 2], [0, 3]]])
    trees = BinaryTrees(spans, torch.zeros(3, 2, dtype=torch.long), torch.tensor([3, 3, 3]))
    marg = sample_span_marginals(trees, 1, 3)
    assert marg[0, 0, 2] == pytest.approx(2 / 3) and marg[0, 1, 3] == pytest.approx(1 / 3)
    assert marg[0, 0, 3] == 1.0 and marg[0, 2, 3] == 1.0 and marg[0, 0, 1] == 1.0

    run = tmp_path / "run"
    train(runner, cli_app, recipe(tmp_path, corpus, model__kind="ncfg"), run)
    trained = load_run(run, "cpu")
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]])
    lengths = torch.tensor([5, 3])
    torch.manual_seed(0)
    drawn, log_p = draw_trees_for_decoding(trained, ids, lengths, 6)
    torch.manual_seed(0)
    best = best_of_samples(trained, ids, lengths, 6)
    pick = log_p.view(2, 6).argmax(1) + torch.tensor([0, 6])
    assert torch.equal(best.spans, drawn.spans[pick]) and torch.equal(best.labels,
                                                                      drawn.labels[pick])
    mbr = sampler_mbr(trained, ids, lengths, 8)
    forest_structure(mbr)
    assert torch.equal((mbr.labels >= 0).sum(1), lengths - 1)
    draws = sampler_draws(trained, ids, lengths, 3)
    assert not draws.exact_posterior and draws.log_q.shape == (6,)
    # a 3-word tree has a single trajectory: there log q is exact, log P_F of the tree
    short = BinaryTrees(draws.trees.spans[3:, :2], draws.trees.labels[3:, :2],
                        draws.trees.lengths[3:])
    with torch.no_grad():
        log_pf, log_pb = trained.sampler.log_prob_of(ids[1:, :3], lengths[1:], short)
    assert torch.allclose(draws.log_q[3:], log_pf, atol=1e-5) and bool((log_pb == 0).all())
    with torch.no_grad():
        lp = trained.model.log_joint(ids.repeat_interleave(3, 0), lengths.repeat_interleave(3, 0),
                                     draws.trees)
    assert torch.allclose(lp, draws.log_joint)


def test_mcem_run_has_no_sampler_and_decodes_by_chains(tmp_path, corpus, runner, cli_app):
    from grammars.run import load_run

    run = tmp_path / "mcem"
    train(runner, cli_app, recipe(tmp_path, corpus, model__kind="ncfg", method="mcem"), run)
    assert load_run(run, "cpu").sampler is None
    text = tmp_path / "in.txt"
    words = json.loads((run / "vocab.json").read_text())["tokens"][1:4]
    text.write_text(" ".join(words) + "\n" + words[0] + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    result = runner.invoke(cli_app, ["parse", str(run), "--input", str(text), "--out", str(out),
                                     "--decode", "sample", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize("changes,needle", [
    ({"model__kind": "ncfg", "method": "exact-sampling"}, "context-free"),
    ({"model__kind": "cpcfg"}, "compound"),
    ({"objective__name": "reverse_kl"}, "learn_backward"),
    ({"em__importance_weighted": True}, "mstep_local_search_rounds"),
    ({"method": "mcem", "em__mstep_samples": 2}, "mstep_samples"),
    ({"method": "gfnm"}, "unknown method"),
    ({"em__mstep_labels": "marginal"}, "mstep_labels"),
])
def test_bad_method_configurations_are_one_line_errors(tmp_path, corpus, runner, cli_app,
                                                       changes, needle):
    result = runner.invoke(cli_app, ["train", str(recipe(tmp_path, corpus, **changes)), "--out",
                                     str(tmp_path / "bad"), "-q", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MINE = ["ptb-npcfg-gfnem", "ptb-ncfg-gfnem", "ptb-ncfg-mcem", "synthetic-npcfg-gfnem",
        "synthetic-ncfg-gfnem"]


@pytest.mark.parametrize("name", MINE)
def test_recipes_resolve_and_say_what_they_reproduce(name):
    from gfnem_cli.engine.config import resolve_config
    from grammars.recipe import GRAMMAR_DEFAULTS

    path = RECIPES / f"{name}.yaml"
    config = resolve_config(GRAMMAR_DEFAULTS, path, [])
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#") and ("Hu et al." in text or "Hu, Malkin" in text)
    assert config["method"] in ("gfnem", "mcem")
    if name.startswith("ptb"):
        assert config["data"]["max_train_length"] == 20 and config["train"]["batch_size"] == 32
        assert config["train"]["lr"] == 1e-3
    if name.startswith("ptb") and config["method"] == "gfnem":
        s, em = config["sampler"], config["em"]
        assert (s["d_model"], s["num_layers"], s["num_heads"]) == (512, 6, 4)
        assert (s["lr_policy"], s["lr_flows"], s["temperature"]) == (1e-4, 3e-3, 1.1)
        expected = (7.0, 3.5) if config["model"]["kind"] == "ncfg" else (6.0, 3.0)
        assert (em["threshold_max"], em["threshold_min"]) == expected
        assert em["threshold_horizon"] == 10000
        # 10 local-search rounds in all, one chain (the authors' --mcmc_steps 10), k per round
        assert s["local_search_rounds"] + em["mstep_local_search_rounds"] == 10
        assert s["local_search_continue"] and em["mstep_reuse_samples"]
        assert s["local_search_k"] == "uniform" and config["objective"]["name"] == "subtb"


@pytest.mark.parametrize("name", ["synthetic-npcfg-gfnem", "synthetic-ncfg-gfnem"])
def test_synthetic_recipes_train(tmp_path, corpus, runner, cli_app, name):
    train(runner, cli_app, RECIPES / f"{name}.yaml", tmp_path / "run", "--set",
          f"data.path={corpus}", "--set", "train.steps=2", "--set", "train.batch_size=4",
          "--set", "data.max_valid_sentences=4")
    evals = [x for x in metric_lines(tmp_path / "run") if x["kind"] == "eval"]
    assert evals and evals[-1]["val_nll_per_token"] > 0


@pytest.mark.parametrize("kind,expected", [("ncfg", "mbr"), ("npcfg", "viterbi")])
def test_default_decode_is_viterbi_with_a_dynamic_program_else_mbr(tmp_path, corpus, runner,
                                                                   cli_app, kind, expected):
    path = recipe(tmp_path, corpus, model__kind=kind, train__steps=2,
                  sampler__local_search_rounds=0, em__mstep_local_search_rounds=0,
                  em__sleep_weight=0.0)
    run = tmp_path / "run"
    train(runner, cli_app, path, run)
    report = tmp_path / "report.json"
    result = runner.invoke(cli_app, ["evaluate", str(run), "--data", str(corpus), "--samples",
                                     "2", "--decode-samples", "2", "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["decoding"] == expected
