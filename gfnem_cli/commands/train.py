"""`gfnem train RECIPE.yaml --out RUN`: fit a model as the recipe says, resumably."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rich.markup import escape

from gfnem_cli.console import console, err_console, friendly_errors, warn


@friendly_errors
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe (see recipes/); every key is validated."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory: config, "
                                       "metrics.jsonl, checkpoints and the final report are "
                                       "written here (required unless --print-config)."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Override a recipe key by dotted path, e.g. --set train.steps=500 "
        "--set model.nonterminals=20. Repeatable; values are read as YAML."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly "
                                "where its last checkpoint stopped (same data, same config; "
                                "train.steps and train.max_model_updates may be raised)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    log_every: int = typer.Option(0, "--log-every", help="When output goes to a file (a "
                                  "cluster job, nohup): one timestamped line every N steps, "
                                  "besides one after every validation; 0 = about 50 lines per "
                                  "run. The last N steps (at least 10) are also the window of "
                                  "the smoothed loss (loss_avg) and of the share of steps that "
                                  "updated the model (EM methods: 'updated k/N'); 5N steps "
                                  "without a model update (and at least a tenth of the run) "
                                  "give a notice."),
    print_config: bool = typer.Option(False, "--print-config", help="Print every key of the "
                                      "resolved config (recipe, then --set) with its value and, "
                                      "where it differs, its default; then exit without "
                                      "training or writing anything."),
) -> None:
    """Train a grammar or a discrete VAE (recipe `family`) by GFlowNet-EM or a baseline.

    Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and
    exits with code 130; `--resume` then continues exactly. The run
    directory is never deleted.

    The run opens with a header (run directory, device, parameters, data
    sizes). In a terminal a live bar follows (step count, ETA, figures, the
    last and the best validation); when output goes to a file, timestamped
    lines (--log-every). Every metrics.jsonl record has `time` and
    `elapsed_s`. Grammar runs also report validation F1 where the split has
    gold trees (train.valid_f1, data.max_valid_f1_sentences), and
    train.select_metric may choose best.pt by F1 instead of NLL.
    """
    import shlex
    import sys

    from gfnem_cli import families
    from gfnem_cli.commands.checks import at_least
    from gfnem_cli.engine.trainer import TrainingInterrupted

    at_least("--log-every", log_every, 0, "0 gives about 50 lines per run")
    if print_config:
        _print_config(recipe, overrides or [])
        return
    if out is None:
        from gfnem_cli.engine.errors import GfnemError

        raise GfnemError("missing option --out (the run directory)",
                         hint="gfnem train RECIPE --out RUN, or --print-config to only look")

    command = ["gfnem", "train", str(recipe), "--out", str(out)]
    for override in overrides or []:
        command += ["--set", override]
    if log_every:
        command += ["--log-every", str(log_every)]
    try:
        train_run = families.for_recipe(recipe, overrides or []).train_run
        _join_torchrun(device)
        report = train_run(recipe, out, overrides or [], resume=resume, device=device,
                           show_progress=not quiet, command=["gfnem", *sys.argv[1:]],
                           log_every=log_every)
    except TrainingInterrupted as stop:
        again = " ".join(shlex.quote(part) for part in command + ["--resume"])
        if _main_rank():
            err_console.print(f"[bold yellow]{escape(str(stop))}[/]; continue with "
                              f"`{escape(again)}`", soft_wrap=True, highlight=False)
        raise typer.Exit(130)
    if not _main_rank():
        return
    if report.get("ended_on_nonfinite_steps"):
        warn(f"the last {report['ended_on_nonfinite_steps']} steps had non-finite losses and "
             "were skipped; the checkpoint holds the parameters of the last good step")
    elif report.get("nonfinite_steps_skipped"):
        warn(f"{report['nonfinite_steps_skipped']} steps with non-finite losses were skipped")
    best = report.get("best", {})
    image = families.family_of_recipe(recipe, overrides or []) == "vae"
    chosen = report.get("select_metric")
    by_f1 = (f"best {chosen} {best[chosen]:.2f} at step {report['best_step']}"
             f"{_also_nll(best)}; " if chosen and chosen.endswith("_f1")
             and best.get(chosen) is not None else "")
    updated = report.get("updated") or ("model" if image else "grammar")
    console.print(f"[bold green]done[/]: {report['steps']} steps ({report['model_updates']} "
                  f"{updated} updates) in {report['train_seconds']} s; "
                  + by_f1
                  + (f"best val NLL/token {best['val_nll_per_token']:.4f} at step "
                     f"{report['best_step']}{_also_f1(best)}; "
                     if not by_f1 and best.get("val_nll_per_token") is not None else "")
                  + (f"best val NLL {best['val_nll_nats']:.3f} nats/image at step "
                     f"{report['best_step']}; " if image and best.get("val_nll_nats")
                     is not None else "")
                  + f"run in {escape(str(out))}", highlight=False, soft_wrap=True)


def _main_rank() -> bool:
    from gfnem_cli.engine import distributed

    return distributed.world().is_main


def _join_torchrun(device: str) -> None:
    """Under `torchrun` (WORLD_SIZE > 1) join the process group before anything else: data
    parallelism over the ranks (gfnem_cli/engine/distributed.py); a plain run skips this."""
    from gfnem_cli.engine import distributed

    if distributed.launched_by_torchrun():
        from gfnem_cli.engine.runs import resolve_device

        distributed.join(resolve_device(device))


def _also_f1(best: dict) -> str:
    """The validation F1 beside the NLL of the best checkpoint, where it was measured."""
    f1 = best.get("val_sentence_f1")
    return f" (sentence F1 {f1:.2f})" if isinstance(f1, (int, float)) else ""


def _also_nll(best: dict) -> str:
    nll = best.get("val_nll_per_token")
    return f" (val NLL/token {nll:.4f})" if isinstance(nll, (int, float)) else ""


def _print_config(recipe: Path, overrides: list[str]) -> None:
    """Every resolved key, `key: value`, with `# default: ...` where the recipe or --set
    changed it; the same checks as training, so a bad recipe is refused here too."""
    from gfnem_cli import families
    from gfnem_cli.engine.config import flatten, resolve_config

    defaults = families.for_recipe(recipe, overrides).DEFAULTS
    config = flatten(resolve_config(defaults, recipe, overrides))
    plain = flatten(defaults)
    width = max(len(key) for key in config)
    for key, value in config.items():
        note = "" if plain.get(key) == value else f"   # default: {_show(plain.get(key))}"
        console.print(f"{key.ljust(width)}  {_show(value)}{note}", highlight=False,
                      soft_wrap=True, markup=False)


def _show(value) -> str:
    import json

    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    return json.dumps(value) if isinstance(value, (list, dict, str, bool)) or value is None \
        else str(value)
