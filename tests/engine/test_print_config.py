"""`gfnem train RECIPE --print-config`: every resolved key with its value, defaults shown where
the recipe or --set changed them, nothing written; a bad key is refused as training would."""
from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_print_config_shows_every_key_and_changed_defaults(runner, cli_app, tmp_path):
    from gfnem_cli.engine.config import flatten
    from vae.recipe import VAE_DEFAULTS

    result = runner.invoke(cli_app, ["train", str(RECIPES / "shapes-dvae-gfnem.yaml"),
                                     "--print-config", "--set", "train.seed=3"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert set(lines) == set(flatten(VAE_DEFAULTS))          # every key, nothing else
    assert "# default: 0" in lines["train.seed"] and " 3 " in lines["train.seed"] + " "
    assert "# default: 128" in lines["model.channels"]        # the recipe's own change
    assert "default" not in lines["model.num_codes"]          # unchanged: no note
    assert list(tmp_path.iterdir()) == []


def test_print_config_refuses_what_training_refuses_and_out_is_otherwise_required(runner,
                                                                                  cli_app):
    recipe = str(RECIPES / "synthetic-npcfg.yaml")
    bad = runner.invoke(cli_app, ["train", recipe, "--print-config", "--set", "train.lr=0"])
    assert bad.exit_code == 2 and "train.lr" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(cli_app, ["train", recipe])
    assert missing.exit_code == 2 and "--out" in missing.output
