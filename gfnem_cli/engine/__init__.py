"""The model-agnostic engine, shared by every family (grammars, vae); it never imports one.

    family.py       the contract a family implements: LatentFamily, SamplerFamily, Exploration,
                    Draw, Refined, and one typed Protocol per optional capability (LocalSearch,
                    SleepPhase, RaoBlackwellizedMStep, CountsUnits)
    trajectories.py what a sampler hands the objectives (DESIGN.md §2)
    objectives/     TB, SubTB, DB, VarGrad, the divergences and their control variates;
                    from_recipe.py: recipe -> objective, and the recipe sections families share
    behaviour.py    choose: the tempered, ε-uniform behaviour policy every sampler draws from
    estep.py        GFlowNetEStep (a trained sampler), PosteriorEStep (a fixed procedure)
    em.py           EMOptions, EMLoop: the EM loop of GFlowNet-EM
    schedules.py    the M-step threshold τ(g), the E-loss moving average, the model's lr(g)
    trainer.py      the training loop: progress, metrics, checkpoints, resume, signals
    optimizer_step.py  the checked optimizer step (checked_step; clip_norm, settle: one wait)
    distributed.py  data parallelism under torchrun: shards, gradient sums, agreed decisions
    row_noise.py    train.row_noise: a step's draws keyed by (seed, step, call, global row)
    device_checks.py  expect: invariant checks that never make a GPU wait
    progress.py     what a run shows while it trains: a live display in a terminal, timestamped
                    lines in a file (`--log-every`); live_figures.py: the figures it shows
                    (smoothed loss, EM gate and M-step share, the stalled-model notice)
    run_header.py   the lines a run opens with: run, device, method, parameters, the family's data
    checkpoint.py   atomic checkpoints, RNG state, old checkpoint keys mapped on load
    runs.py         run directories: start / resume checks, device choice, config, reading back
    run_records.py  finished runs read back as numbers: report / evaluation figures, metrics.jsonl
                    records (torn lines skipped), mean ± sd (`gfnem summarize`, `gfnem plot`)
    scalar_logs.py  train.logger: the same scalars as metrics.jsonl to TensorBoard or W&B
    importance.py   the importance-sampled log-likelihood estimate in float64 with its error
    recipe_schema.py, config.py   recipe keys with ranges; recipes, --set, saved configs
    files.py        atomic writes; errors.py: GfnemError, the one-line user error
    transfer.py     batches to a GPU from pinned memory, without waiting
    precision.py    train.precision (bf16 autocast of the networks), compile, deterministic
    provenance.py   gfnem's version and the source commit (no torch: `gfnem --version`)
    prepared.py     prepared data sets on disk (corpora, image sets): written whole, swapped
                    in atomically, every file checksummed in the manifest and checked on load

Families import the public contract from here (`from gfnem_cli.engine import EMLoop`). The
names are loaded on first use (PEP 562), so importing one light module (errors, files) from
the command line never imports torch and `gfnem --help` stays fast.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "family": ("LatentFamily", "SamplerFamily", "Exploration", "Draw", "Refined", "LocalSearch",
               "SleepPhase", "RaoBlackwellizedMStep", "CountsUnits"),
    "trajectories": ("Trajectories",),
    "behaviour": ("choose",),
    "estep": ("GFlowNetEStep", "PosteriorEStep"),
    "em": ("EMOptions", "EMLoop"),
    "schedules": ("ThresholdSchedule", "MovingAverage", "LearningRateSchedule"),
    "trainer": ("Trainer", "TrainerOptions", "TrainingInterrupted", "VALIDATION_NOTES"),
    "optimizer_step": ("NonFiniteLoss", "checked_step", "clip_norm", "settle", "clear_grads"),
    "importance": ("ImportanceEstimate", "standard_error"),
    "errors": ("GfnemError",),
    "objectives": ("build_objective", "OBJECTIVES", "Objective", "check_on_policy"),
    "objectives.from_recipe": ("DIVERGENCES", "objective_from_config", "exploration_from_config",
                               "train_section", "objective_section", "em_section",
                               "exploration_section", "extend", "em_options_from_config",
                               "model_optimizer_from_config", "lr_schedule_from_config",
                               "lr_schedule_conflicts",
                               "shared_conflicts"),
    "runs": ("BEST", "LAST", "RESUMABLE_CHANGES", "check_checkpoint_config",
             "check_resume_config", "check_start", "checkpoint_path", "inspect_run_dir",
             "resolve_device", "run_info", "saved_config", "write_run_files",
             "begin", "launch"),
    "config": ("resolve_config", "load_config", "validate_config"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
