"""The recipe validator (issue 10, "nothing lost, nothing silent"): every key has a range, a
value outside it is a one-line error naming the key, the value, the range and where it came
from, before anything is written. One test per defect seen on main before the fix."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from gfnem_cli.engine.config import load_recipe, resolve_config, save_config
from gfnem_cli.engine.errors import GfnemError
from grammars.recipe import GRAMMAR_DEFAULTS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
R = RECIPES / "synthetic-npcfg.yaml"


def refused(overrides, recipe=R) -> GfnemError:
    with pytest.raises(GfnemError) as caught:
        resolve_config(GRAMMAR_DEFAULTS, recipe, overrides)
    return caught.value


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- 1. values that trained silently (a negative clip reverses the gradient)
@pytest.mark.parametrize("override,key", [
    ("train.grad_clip=-1", "train.grad_clip"), ("train.grad_clip=0", "train.grad_clip"),
    ("train.lr=0", "train.lr"), ("train.steps=0", "train.steps"),
    ("train.steps=-5", "train.steps"), ("sampler.grad_clip=-3", "sampler.grad_clip"),
    ("sampler.lr_policy=0", "sampler.lr_policy"), ("em.ema_decay=1.5", "em.ema_decay"),
    ("sampler.epsilon=2", "sampler.epsilon"), ("mcem.rotation_prob=-0.1", "mcem.rotation_prob"),
    ("em.sleep_weight=-1", "em.sleep_weight"), ("train.seed=-1", "train.seed"),
    ("data.max_train_length=1", "data.max_train_length"),
])
def test_silently_wrong_values_are_refused(override, key):
    error = refused([override])
    assert error.path == "--set" and f"'{key}'" in error.message and "must be" in error.message
    assert override.split("=", 1)[1] in error.message          # the value shown


def test_negative_grad_clip_refused_end_to_end_before_anything_is_written(tmp_path, runner,
                                                                          cli_app):
    data = tmp_path / "data"
    made = runner.invoke(cli_app, ["prepare", "synthetic", "--out", str(data),
                                   "--num-sentences", "40", "--max-length", "6"])
    assert made.exit_code == 0, made.output
    recipe = write(tmp_path, f"data:\n  path: {data}\nmodel:\n  nonterminals: 3\n"
                             "  preterminals: 3\n  symbol_dim: 8\ntrain:\n  steps: 2\n")
    out = tmp_path / "run"
    result = runner.invoke(cli_app, ["train", str(recipe), "--out", str(out), "-q",
                                     "--device", "cpu", "--set", "train.grad_clip=-1"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "train.grad_clip" in lines[0] and "-1" in lines[0] and "Traceback" not in result.output
    assert not out.exists()


# ---- 2. values and files that gave tracebacks
@pytest.mark.parametrize("override", [
    "train.eval_every=0", "train.checkpoint_every=0", "train.batch_size=0", "train.lr=-0.001",
    "train.lr=.nan", "train.betas=[1.0, 0.5]", "train.betas=[0.9]",
    "train.betas=[0.9, 0.99, 0.5]", "train.betas=[-0.1, 0.9]",
    "train.betas=[.nan, 0.9]", "sampler.betas=[0.9, 1]", "em.sleep_period=0",
])
def test_values_that_crashed_deep_in_the_run_are_one_line_errors(override):
    key = override.split("=")[0]
    error = refused([override])
    assert f"'{key}'" in error.message and "\n" not in str(error)


def test_betas_range_is_spelled_out():
    assert "two numbers in [0, 1)" in refused(["train.betas=[1, 0.5]"]).message


def test_recipe_that_is_a_directory(tmp_path):
    error = refused([], recipe=tmp_path)
    assert error.path == str(tmp_path) and "directory" in error.message


def test_recipe_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  steps: 3\ndata:\n  path: caf\xe9\n".encode("latin-1"))
    error = refused([], recipe=path)
    assert "UTF-8" in error.message and error.line == 4


def test_recipe_that_cannot_be_read(tmp_path, monkeypatch):
    path = write(tmp_path, "train:\n  steps: 3\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(Path, "read_text", denied)
    error = refused([], recipe=path)
    assert "Permission denied" in error.message and error.path == str(path)


@pytest.mark.parametrize("text", ["[]\n", "0\n", "false\n", "''\n"])
def test_recipe_whose_top_level_is_not_a_mapping(tmp_path, text):
    error = refused([], recipe=write(tmp_path, text))
    assert "must be a mapping" in error.message


def test_saved_config_that_is_not_a_mapping_is_one_line(tmp_path):
    from gfnem_cli.engine.config import load_config, validate_config

    with pytest.raises(GfnemError, match="mapping"):
        validate_config(GRAMMAR_DEFAULTS, ["train", 3], tmp_path / "config.yaml")
    path = write(tmp_path, "- train\n", "config.yaml")
    with pytest.raises(GfnemError, match="mapping"):
        load_config(GRAMMAR_DEFAULTS, path)


def test_mapping_where_a_value_belongs_names_the_key_and_line(tmp_path):
    error = refused([], recipe=write(tmp_path, "train:\n  steps: 3\n  lr:\n    a: 1\n"))
    assert "'train.lr'" in error.message and "single value" in error.message
    assert error.line == 4
    assert "single value" in refused(["train.lr={a: 1}"]).message


def test_value_where_a_section_belongs(tmp_path):
    error = refused([], recipe=write(tmp_path, "method: marginal\ntrain: 3\n"))
    assert "'train' is a section" in error.message and error.line == 2
    assert "'train' is a section" in refused(["train=3"]).message


def test_empty_section_is_fine(tmp_path):
    config = resolve_config(GRAMMAR_DEFAULTS, write(tmp_path, "train:\n  # steps: 3\n"), [])
    assert config["train"] == GRAMMAR_DEFAULTS["train"]


def test_key_given_twice_is_an_error(tmp_path):
    error = refused([], recipe=write(tmp_path, "train:\n  lr: 0.1\n  steps: 2\n  lr: 0.2\n"))
    assert "'train.lr'" in error.message and "twice" in error.message and error.line == 4


# ---- 3. YAML 1.1 reads 1e-3 as text: numbers are numbers wherever a number is expected
def test_exponent_without_a_dot_is_a_number_in_set_and_in_files(tmp_path):
    assert resolve_config(GRAMMAR_DEFAULTS, R, ["train.lr=1e-3"])["train"]["lr"] == 1e-3
    path = write(tmp_path, "train:\n  lr: 1e-3\n  steps: 1e4\nsampler:\n  lr_flows: 3E-3\n")
    config = resolve_config(GRAMMAR_DEFAULTS, path, [])
    assert config["train"]["lr"] == 1e-3 and config["sampler"]["lr_flows"] == 3e-3
    assert config["train"]["steps"] == 10000 and isinstance(config["train"]["steps"], int)


@pytest.mark.parametrize("spelling", [".inf", "inf", "Inf", "+inf", "1e999"])
def test_infinity_where_the_range_allows_it(spelling, tmp_path):
    config = resolve_config(GRAMMAR_DEFAULTS, R, [f"em.threshold_max={spelling}",
                                                  f"em.threshold_min={spelling}"])
    assert config["em"]["threshold_max"] == math.inf == config["em"]["threshold_min"]
    path = write(tmp_path, f"em:\n  threshold_max: {spelling}\n")
    assert resolve_config(GRAMMAR_DEFAULTS, path, [])["em"]["threshold_max"] == math.inf
    assert resolve_config(GRAMMAR_DEFAULTS, R, ["em.threshold_min=-inf"])["em"][
        "threshold_min"] == -math.inf
    assert resolve_config(GRAMMAR_DEFAULTS, R, ["train.grad_clip=.inf"])["train"][
        "grad_clip"] == math.inf


@pytest.mark.parametrize("override", ["train.lr=.inf", "em.threshold_max=.nan",
                                      "sampler.temperature=.inf", "em.sleep_weight=.inf",
                                      "objective.alpha=.nan", "train.grad_clip=-.inf"])
def test_infinity_and_nan_where_the_range_refuses_them(override):
    key = override.split("=")[0]
    assert f"'{key}'" in refused([override]).message


@pytest.mark.parametrize("override", ["train.lr=inf", "em.threshold_max=nan", "train.steps=inf",
                                      "train.betas=abc", "train.lr=-1e-3"])
def test_refusals_that_already_worked_still_do(override, tmp_path):
    assert f"'{override.split('=')[0]}'" in refused([override]).message
    assert "not found" in refused([], recipe=tmp_path / "nope.yaml").message
    for text in ("- train\n- steps\n", "just text\n"):
        assert "must be a mapping" in refused([], recipe=write(tmp_path, text)).message


def test_file_values_are_range_checked_with_their_line(tmp_path):
    path = write(tmp_path, "# a comment\ntrain:\n  steps: 3\n  grad_clip: -2\n")
    error = refused([], recipe=path)
    assert (error.path, error.line) == (str(path), 4) and "'train.grad_clip'" in error.message
    assert str(error).startswith(f"{path}:4: key 'train.grad_clip' must be")


# ---- 4. choices checked up front, the choices in the message
@pytest.mark.parametrize("key,bad,choice", [
    ("method", "gfnm", "exact-sampling"), ("inside", "torch_struct", "torch-struct"),
    ("model.kind", "pcfg", "ncfg"), ("objective.name", "kl", "reverse_kl"),
    ("objective.control_variate", "mean", "loo"), ("em.mstep_labels", "marginal", "summed"),
    ("family", "vae2", "grammar"),
])
def test_string_choices_are_checked_with_the_choices_listed(key, bad, choice):
    error = refused([f"{key}={bad}"])
    assert key in error.message and bad in error.message and choice in error.message


def test_objective_spellings_are_folded_as_the_consumer_reads_them():
    config = resolve_config(GRAMMAR_DEFAULTS, R, ["objective.name=Forward-KL"])
    assert config["objective"]["name"] == "forward_kl"


def test_choices_match_what_the_consumers_accept():
    from gfnem_cli.engine.objectives import OBJECTIVES
    from gfnem_cli.engine.objectives.divergences import CONTROL_VARIATES
    from grammars import recipe
    from grammars.training import em_methods
    from grammars.charts.backends import get_backend
    from grammars.models import KINDS

    assert set(recipe.OBJECTIVES) == set(OBJECTIVES)
    assert set(recipe.CONTROL_VARIATES) == set(CONTROL_VARIATES)
    assert set(recipe.MSTEP_LABELS) == set(em_methods.MSTEP_LABELS)
    assert set(recipe.METHODS) == {"marginal", *em_methods.METHODS}
    assert set(recipe.DIVERGENCES) == set(em_methods.DIVERGENCES)
    assert set(recipe.KINDS) == set(KINDS)
    from grammars.training.validation_f1 import F1_METRICS
    assert set(recipe.SELECT_METRICS) == {"val_nll_per_token", *F1_METRICS}
    get_backend("ours")
    with pytest.raises(ValueError):
        get_backend("not-a-backend")


# ---- the schema itself
def test_every_default_key_declares_a_range_and_sits_inside_it():
    from gfnem_cli.engine.config import flatten
    from grammars.recipe import GRAMMAR_RANGES

    flat = flatten(GRAMMAR_DEFAULTS)
    assert set(flat) == set(GRAMMAR_RANGES)
    for key, value in flat.items():
        assert GRAMMAR_RANGES[key].coerce(value) == value, key


def test_cross_key_constraints(tmp_path):
    assert "threshold_min" in refused(["em.threshold_min=7"]).message
    gfnem = ["method=gfnem", "sampler.learn_backward=false"]
    error = refused(gfnem + ["objective.name=vargrad"])
    assert "samples_per_input" in error.message and error.path == "--set"
    resolve_config(GRAMMAR_DEFAULTS, R, gfnem + ["objective.name=renyi",
                                                 "sampler.samples_per_input=2"])
    assert "learn_backward" in refused(["method=gfnem", "objective.name=tsallis"]).message
    assert "num_heads" in refused(["method=gfnem", "sampler.num_heads=3"]).message
    resolve_config(GRAMMAR_DEFAULTS, R, ["sampler.num_heads=3"])     # no sampler: not checked
    path = write(tmp_path, "method: gfnem\nobjective:\n  name: vargrad\n")
    assert refused([], recipe=path).line == 3        # placed at the key the recipe set
    # a temperature for fresh M-step draws is refused when the M-step reuses the E-step's
    error = refused(["em.mstep_reuse_samples=true", "em.mstep_temperature=0"])
    assert "mstep_reuse_samples" in error.message and "mstep_temperature" in error.message
    assert resolve_config(GRAMMAR_DEFAULTS, R, ["em.mstep_temperature=0"])["em"][
        "mstep_temperature"] == 0                     # 0 = greedy draws, in range
    # phases replace the gate and cannot reuse E-step latents
    phases = ["em.alternate_every=400", "em.threshold_max=.inf", "em.threshold_min=.inf"]
    resolve_config(GRAMMAR_DEFAULTS, R, phases)
    assert "alternate_every" in refused(["em.alternate_every=400"]).message
    assert "mstep_reuse_samples" in refused(phases + ["em.mstep_reuse_samples=true"]).message


def test_set_can_fix_what_the_recipe_breaks(tmp_path):
    path = write(tmp_path, "method: gfnem\nobjective:\n  name: vargrad\n")
    config = resolve_config(GRAMMAR_DEFAULTS, path, ["sampler.samples_per_input=4"])
    assert config["sampler"]["samples_per_input"] == 4


def test_text_keys_keep_what_set_typed():
    config = resolve_config(GRAMMAR_DEFAULTS, R, ["data.path=2020", "data.valid_split=1e-3"])
    assert config["data"]["path"] == "2020" and config["data"]["valid_split"] == "1e-3"


def test_saved_config_is_validated_again(tmp_path):
    from gfnem_cli.engine.config import load_config, validate_config

    config = resolve_config(GRAMMAR_DEFAULTS, R, [])
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert load_config(GRAMMAR_DEFAULTS, path) == config
    assert validate_config(GRAMMAR_DEFAULTS, yaml.safe_load(path.read_text()), path) == config
    path.write_text(path.read_text().replace("grad_clip: 3.0", "grad_clip: -3.0", 1))
    with pytest.raises(GfnemError) as caught:
        load_config(GRAMMAR_DEFAULTS, path)
    assert caught.value.path == str(path) and caught.value.line is not None
    assert "train.grad_clip" in caught.value.message


def test_save_config_is_atomic(tmp_path, monkeypatch):
    import gfnem_cli.engine.config as config_module

    seen = []
    monkeypatch.setattr(config_module, "write_text_atomic",
                        lambda path, text: seen.append((Path(path), text)))
    save_config({"a": 1}, tmp_path / "config.yaml")
    assert seen == [(tmp_path / "config.yaml", "a: 1\n")]


def test_load_recipe_still_gives_the_flat_keys(tmp_path):
    flat = load_recipe(write(tmp_path, "train:\n  lr: 0.5\nmethod: gfnem\n"))
    assert flat == {"train.lr": 0.5, "method": "gfnem"}


def test_row_noise_takes_both_families_sleep_phases_and_exact_sampling():
    """Dreams (both families) and exact posterior draws are keyed by row noise (issue 14)."""
    from vae.recipe import VAE_DEFAULTS

    noise = ["train.row_noise=true"]
    for extra in (["method=gfnem", "em.sleep_weight=1"], ["method=exact-sampling"],
                  ["method=gfnem", "em.sleep_weight=1", "em.sleep_batch_size=5"]):
        assert resolve_config(GRAMMAR_DEFAULTS, R, noise + extra)["train"]["row_noise"]
    assert resolve_config(VAE_DEFAULTS, RECIPES / "shapes-dvae-gfnem.yaml",
                          noise + ["em.sleep_weight=0.3"])["train"]["row_noise"]
