"""The paper tasks' options for objectives_study.py: which task takes which, what enters a run's
resume key, and where log Z starts (`--log-z-init exact` isolates what TB's learned log Z costs)."""
from __future__ import annotations

import argparse
import math

import torch

from divergence_tasks import TASK_OPTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-z-init", choices=["zero", "exact"], default="zero",
                        help="start log Z at 0 (default) or at the target's exact log Z")
    parser.add_argument("--policy", choices=["gin", "mlp"], default=None,
                        help="phylo's policy network; default gin (the paper's)")
    parser.add_argument("--reward-scale", type=_positive, default=None,
                        help="sequences: multiply log r by this (default 1; larger is peakier)")
    parser.add_argument("--task-seed", dest="task_seed", type=int, default=None,
                        help="seed of the paper tasks' data draw (default 0)")


def _positive(text: str) -> float:
    """A finite number > 0 (0 would flatten the target, NaN break the sampler)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def given(args) -> dict:
    """The task options on the command line, by the tasks' keyword names (None: not given)."""
    return {"seed": args.task_seed, "policy": args.policy, "reward_scale": args.reward_scale}


def check(parser: argparse.ArgumentParser, args, keys: list[str]) -> None:
    """Refuse an option that one of the targets to run does not take."""
    for option, value in given(args).items():
        if value is not None and any(option not in TASK_OPTIONS.get(k, ()) for k in keys):
            takers = sorted(k for k in TASK_OPTIONS if option in TASK_OPTIONS[k])
            parser.error(f"--{option.replace('_', '-').replace('seed', 'task-seed')} applies to "
                         f"{', '.join(takers)} only")
    if args.log_z_init == "exact" and any(k not in TASK_OPTIONS for k in keys):
        parser.error(f"--log-z-init exact applies to {', '.join(sorted(TASK_OPTIONS))} only "
                     "(the targets whose exact log Z the study knows)")


def for_target(key: str, args) -> dict:
    """The task options given on the command line that this target takes."""
    values = given(args)
    return {k: values[k] for k in TASK_OPTIONS.get(key, ()) if values[k] is not None}


#: the tasks' defaults: a default given explicitly is the same run as one left out
DEFAULTS = {"seed": 0, "reward_scale": 1.0}


def settings(key: str, target, args) -> dict:
    """The options' part of a run's resume key: log Z's start and the task options where they
    are not the defaults (so a CSV written before these options existed still resumes), and
    the policy."""
    chosen = {k: v for k, v in for_target(key, args).items() if v != DEFAULTS.get(k)}
    return {**({"log_z_init": args.log_z_init} if args.log_z_init != "zero" else {}), **chosen,
            **({"policy": target.policy} if hasattr(target, "policy") else {})}


def header(key: str, cfg: dict) -> str:
    """The options of a run, for its table's header."""
    shown = {k: cfg[k] for k in TASK_OPTIONS.get(key, ()) if k in cfg}
    if cfg.get("log_z_init", "zero") != "zero":
        shown["log Z init"] = cfg["log_z_init"]
    return (" Options: " + ", ".join(f"{k} {v}" for k, v in shown.items()) + ".") if shown else ""


def init_log_z(sampler, target, how: str) -> None:
    """'zero': keep the sampler's log Z (0); 'exact': set it to the target's exact log Z."""
    if how == "exact":
        if not hasattr(target, "log_z_exact"):
            raise ValueError(f"target {target.name} has no exact log Z")
        with torch.no_grad():
            sampler.log_z.fill_(target.log_z_exact)
    elif how != "zero":
        raise ValueError(f"log Z init must be 'zero' or 'exact', not {how!r}")
