"""Run directories written before the engine's neutral names still resume, parse and evaluate.

Checkpoints made before issue 11 keep the EM loop's model optimizer under `grammar_optimizer`
and its M-step count under em.`grammar_updates`. This test trains a tiny GFlowNet-EM run,
rewrites both of its checkpoints into that old format (the new keys renamed back, and a recipe
key added later, em.alternate_every, removed from the checkpoints' configs and config.yaml),
and checks that `--resume` continues it exactly as an uninterrupted run, and that `evaluate`
and `parse` read it.
"""
from __future__ import annotations

import json

import torch
import yaml

from test_gfnem_train_cli import assert_same_state, corpus, metric_lines, recipe, train  # noqa: F401


def to_old_format(path) -> None:
    state = torch.load(path, weights_only=False)
    method = state["method"]
    method["grammar_optimizer"] = method.pop("model_optimizer")
    method["em"]["grammar_updates"] = method["em"].pop("model_updates")
    del state["config"]["em"]["alternate_every"]          # made before the key existed
    torch.save(state, path)


def drop_new_key(config_yaml) -> None:
    config = yaml.safe_load(config_yaml.read_text())
    del config["em"]["alternate_every"]
    config_yaml.write_text(yaml.safe_dump(config))


def test_checkpoint_upgrade_maps_the_old_keys_only():
    from gfnem_cli.engine.checkpoint import upgrade

    old = {"method": {"grammar_optimizer": {"lr": 1}, "model": {}, "em": {"grammar_updates": 3,
                                                                           "steps": 5}}}
    new = upgrade(old)["method"]
    assert new["model_optimizer"] == {"lr": 1} and "grammar_optimizer" not in new
    assert new["em"] == {"model_updates": 3, "steps": 5}
    current = {"method": {"model_optimizer": {}, "em": {"model_updates": 2}}}
    assert upgrade(json.loads(json.dumps(current))) == current
    assert upgrade({"method": {"model": {}, "optimizer": {}}}) == {"method": {"model": {},
                                                                              "optimizer": {}}}


def test_old_format_run_resumes_exactly_and_evaluates(tmp_path, corpus, runner, cli_app):  # noqa: F811
    path = recipe(tmp_path, corpus, method="gfnem")
    straight, old = tmp_path / "straight", tmp_path / "old"
    train(runner, cli_app, path, straight)
    train(runner, cli_app, path, old, "--set", "train.steps=2")
    for name in ("last.pt", "best.pt"):
        to_old_format(old / "checkpoints" / name)
    drop_new_key(old / "config.yaml")
    assert "grammar_updates" in torch.load(old / "checkpoints" / "last.pt",
                                           weights_only=False)["method"]["em"]
    result = runner.invoke(cli_app, ["evaluate", str(old), "--data", str(corpus),
                                     "--checkpoint", "best", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "NLL/token" in result.output
    parses = tmp_path / "parses.txt"
    result = runner.invoke(cli_app, ["parse", str(old), "--input", str(corpus), "--out",
                                     str(parses), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert parses.read_text().count("\n") > 0
    train(runner, cli_app, path, old, "--set", "train.steps=4", "--resume")
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(old / "checkpoints" / "last.pt", weights_only=False)
    assert_same_state(a["method"], b["method"])
    assert metric_lines(straight) == metric_lines(old)
