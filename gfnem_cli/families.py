"""Which family a recipe or a run belongs to, and that family's run module.

The recipe's `family` key (and, for an existing run, the `family` of its saved config.yaml)
picks the run module `train`, `sample`, `parse` and `evaluate` call. A run module offers
`train_run(recipe, out, overrides, resume, device, show_progress, command, log_every)` and
`load_run(run_dir, device, which)`. Adding a family is one entry in `RUN_MODULES`; a family
that is unknown (or not built yet) is a one-line error naming the known ones. Modules are
imported only when a command needs one, so `gfnem --help` stays fast.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from gfnem_cli.engine.config import load_recipe, parse_override
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.runs import read_saved_config

DEFAULT = "grammar"      # a recipe without a `family` key, as every schema's default
RUN_MODULES = {
    "grammar": "grammars.run",
    "vae": "vae.run",
}


def run_module(family: object, source: object = None) -> ModuleType:
    """The run module of `family`, or a one-line error naming the known families."""
    if not isinstance(family, str) or family not in RUN_MODULES:
        raise GfnemError(f"unknown family {family!r}", source,
                         hint="known families: " + ", ".join(RUN_MODULES))
    return importlib.import_module(RUN_MODULES[family])


def family_of_recipe(recipe: Path | None, overrides: list[str]) -> str:
    """The family a recipe (with its --set overrides) names, read before any schema check."""
    family: object = DEFAULT
    source: object = None
    if recipe is not None:
        flat = load_recipe(recipe)
        if "family" in flat:
            family, source = flat["family"], recipe
    for text in overrides or []:
        key, value = parse_override(text)
        if key == "family":
            family, source = value, "--set"
    run_module(family, source)          # an unknown family is refused here, in one line
    return family


def family_of_run(run_dir: Path) -> str:
    """The family of a trained run, from its saved config.yaml."""
    family = read_saved_config(run_dir).get("family", DEFAULT)
    run_module(family, Path(run_dir) / "config.yaml")
    return family


def for_recipe(recipe: Path | None, overrides: list[str]) -> ModuleType:
    return run_module(family_of_recipe(recipe, overrides))


def for_run(run_dir: Path) -> ModuleType:
    return run_module(family_of_run(run_dir))
