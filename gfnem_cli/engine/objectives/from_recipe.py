"""Recipe -> objective, and the recipe sections every family shares (DESIGN.md §3, §4).

A family's recipe schema (`grammars/recipe.py`, later `vae/recipe.py`) is built from these
sections, each a tree of `Key(default, range)` a family may give its own defaults and extend:

    train_section(**defaults)     steps, update cap, batch size, the model's Adam, seed, intervals,
                                  the scalar logger (none | tensorboard | wandb), precision
    objective_section()           the E-step loss: name and its options
    em_section(**defaults)        the M-step gate (threshold schedule, EMA), M-step draws,
                                  importance weighting, the sleep phase, validation samples
    exploration_section()         how the E-step samples: N per input, temperature, ε, local search
    extend(section, after, keys)  a section with a family's keys inserted after one of its keys

checked across keys by

    shared_conflicts(config, input_word)   the threshold order; N >= 2 where the objective
                                           compares an input's trajectories
    lr_schedule_conflicts(config, methods) a schedule on a method that would ignore it

and read back by

    objective_from_config(config) -> (objective, needs_flows)   the `objective` section built
    exploration_from_config(section) -> Exploration
    em_options_from_config(config) -> EMOptions                 the M-step gate and M-step draws
    model_optimizer_from_config(config, parameters) -> Adam     θ's optimizer (`train` section)
    lr_schedule_from_config(config) -> LearningRateSchedule     θ's learning rate over updates
"""
from __future__ import annotations

import math

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.family import LOCAL_SEARCH_LOSSES, Exploration
from gfnem_cli.engine.objectives import OBJECTIVES, build_objective
from gfnem_cli.engine.objectives.divergences import CONTROL_VARIATES
from gfnem_cli.engine.recipe_schema import (
    ANY_THRESHOLD, AT_LEAST_ONE, BETAS, BOOLEAN, COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY,
    SEED, UNIT_INTERVAL_OPEN, Conflict, Key, OneOf, Real)
from gfnem_cli.engine.precision import PRECISIONS
from gfnem_cli.engine.scalar_logs import LOGGERS
from gfnem_cli.engine.schedules import LR_DECAYS, LearningRateSchedule

OBJECTIVE_NAMES = tuple(OBJECTIVES)
DIVERGENCES = ("reverse_kl", "forward_kl", "renyi", "tsallis")
NEEDS_FLOWS = ("subtb", "db")
GRAD_CLIP = Real(gt=0, finite=False)           # max gradient norm; .inf = no clipping
LEARNING_RATE = POSITIVE


def objective_name(text: str) -> str:
    """The canonical spelling of an objective name: 'Reverse-KL' -> 'reverse_kl'."""
    return str(text).lower().replace("-", "_")


def train_section(*, batch_size: int = 4, lr: float = 1e-3, betas=(0.75, 0.999),
                  grad_clip: float = 3.0, eval_every: int = 200,
                  checkpoint_every: int = 100) -> dict:
    """`train`: train.lr, train.betas and train.grad_clip are the model's (M-step) optimizer
    in every method; train.steps, max_model_updates, eval_every, checkpoint_every and logger
    are the keys --resume may change."""
    return {
        "steps": Key(1000, AT_LEAST_ONE),
        "max_model_updates": Key(0, COUNT),   # also stop after this many model (M-step)
                                              # updates; 0 = no cap. Compares EM methods at
                                              # equal model updates.
        "batch_size": Key(batch_size, AT_LEAST_ONE),
        "lr": Key(lr, LEARNING_RATE),
        # the model's lr(g) over its updates g (engine/schedules.py): linear warm-up over
        # lr_warmup updates, then constant | linear | cosine decay to lr * lr_final at
        # lr_horizon updates (0 = max_model_updates when set, else steps)
        "lr_decay": Key("constant", OneOf(*LR_DECAYS)),
        "lr_warmup": Key(0, COUNT),
        "lr_final": Key(0.0, PROBABILITY),
        "lr_horizon": Key(0, COUNT),
        "betas": Key(list(betas), BETAS),
        "grad_clip": Key(grad_clip, GRAD_CLIP),
        "seed": Key(0, SEED),
        "eval_every": Key(eval_every, AT_LEAST_ONE),
        "checkpoint_every": Key(checkpoint_every, AT_LEAST_ONE),
        "eval_batch_size": Key(16, AT_LEAST_ONE),
        # also write metrics.jsonl's scalars to RUN/tensorboard/ or W&B, offline in RUN/wandb/
        # (engine/scalar_logs.py)
        "logger": Key("none", OneOf(*LOGGERS)),
        # bf16: the networks (sampler, VAE decoder/encoders) under autocast, everything they
        # feed (log-probs, rewards, the inside algorithm) in float32 (engine/precision.py)
        "precision": Key("float32", OneOf(*PRECISIONS)),
        "deterministic": Key(False, BOOLEAN),     # deterministic kernels (bit-exact on GPU)
        "compile": Key(False, BOOLEAN),           # torch.compile the networks (minutes on CPU)
        # each row's draws a function of (seed, step, row): any world size trains what one
        # process does (engine/row_noise.py); off keeps torch's generators, as before
        "row_noise": Key(False, BOOLEAN),
    }


def objective_section() -> dict:
    """`objective`: the E-step loss (`gfnem_cli.engine.objectives`)."""
    return {
        "name": Key("tb", OneOf(*OBJECTIVE_NAMES, fold=objective_name)),
        "lambda": Key(0.9, POSITIVE),             # subtb only
        "alpha": Key(0.5, Real(gt=0, exclude=(1.0,))),  # renyi, tsallis (alpha -> 1: reverse_kl)
        "control_variate": Key("loo", OneOf(*CONTROL_VARIATES)),  # divergences
        "importance_weighting": Key(False, BOOLEAN),  # divergences: off-policy, reweighted
        "max_log_weight": Key(20.0, Real(gt=0, lt=80)),   # tsallis only (exp must not overflow)
    }


def em_section(*, threshold_max: float = 6.0, threshold_min: float = 3.0,
               threshold_horizon: int = 10000) -> dict:
    """`em`: the M-step gate and draws, importance weighting, sleep phase, validation."""
    return {
        # M-step only while EMA(E-loss) < tau(g), tau linear from threshold_max to
        # threshold_min over threshold_horizon model updates g. On the E-loss scale of the
        # chosen objective (TB: mean squared log-ratio, nats^2). .inf = every step; -.inf for
        # both = never (E-step only).
        "threshold_max": Key(threshold_max, ANY_THRESHOLD),
        "threshold_min": Key(threshold_min, ANY_THRESHOLD),
        "threshold_horizon": Key(threshold_horizon, COUNT),   # 0 = threshold_min from the start
        "ema_decay": Key(0.9, UNIT_INTERVAL_OPEN),
        # k > 0: phases of k M-step-only then k E-step-only steps (the official VAE code's
        # alternate_every, 400), instead of the gate; 0 = no phases
        "alternate_every": Key(0, COUNT),
        "mstep_samples": Key(1, AT_LEAST_ONE),    # latents per input in the M-step
        "mstep_temperature": Key(1.0, NON_NEGATIVE),  # policy temperature of fresh M-step
        #   draws; 0 = greedy, the most probable action at every step (the official
        #   code's greedy decoder updates, its greedy_prob = 1)
        "mstep_reuse_samples": Key(False, BOOLEAN),   # M-step on the E-step's latents (paper code)
        "mstep_local_search_rounds": Key(0, COUNT),   # local-search rounds on M-step latents
                                                      # (paper: 10)
        "importance_weighted": Key(False, BOOLEAN),   # M-step weights softmax(log p + log P_B
                                                      # - log q)
        "sleep_weight": Key(0.0, NON_NEGATIVE),   # sleep phase: weight of -log P_F on dreams
        "sleep_period": Key(1, AT_LEAST_ONE),     # ... every this many steps
        "sleep_batch_size": Key(0, COUNT),        # ... this many dreams (0 = train.batch_size)
        "valid_samples": Key(16, AT_LEAST_ONE),   # M of the importance-sampled bound
    }


def exploration_section() -> dict:
    """The E-step's sampling keys, in a family's sampler section."""
    return {
        "samples_per_input": Key(1, AT_LEAST_ONE),  # N per input (>= 2 for vargrad,
                                                    # divergences)
        "temperature": Key(1.0, POSITIVE),        # E-step exploration: tempered behaviour
                                                  # policy (paper 1.1)
        "epsilon": Key(0.0, PROBABILITY),         # E-step exploration: epsilon-uniform mixing
        "local_search_rounds": Key(0, COUNT),     # E-step: also train on local-search samples
        "local_search_steps": Key(4, AT_LEAST_ONE),   # k backward (and forward) steps a round
        "local_search_loss": Key("rescore", OneOf(*LOCAL_SEARCH_LOSSES)),  # what the E-step's
                        # refined latents train: rescore, the objective on their teacher-forced
                        # trajectories; path, the balance of the last round's k + k steps
    }


def extend(section: dict, after: str, keys: dict) -> dict:
    """`section` with `keys` inserted right after key `after` (recipes list keys in order)."""
    if after not in section:
        raise KeyError(after)
    out: dict = {}
    for name, node in section.items():
        out[name] = node
        if name == after:
            out.update(keys)
    return out


def lr_schedule_conflicts(config: dict, methods: tuple[str, ...]):
    """A learning-rate schedule on a method that keeps its own optimizer, or a decay option
    without a decay, would be ignored: refused; `methods` step θ at lr(g)."""
    train = config["train"]
    if train["lr_decay"] == "constant":
        for key in ("lr_final", "lr_horizon"):
            if train[key]:
                yield Conflict((f"train.{key}",), f"train.{key} shapes a decay, but "
                               "train.lr_decay is constant", "set train.lr_decay: cosine or "
                               f"linear, or leave train.{key} at 0")
    if (train["lr_decay"] != "constant" or train["lr_warmup"]) and config["method"] not in methods:
        key = "train.lr_decay" if train["lr_decay"] != "constant" else "train.lr_warmup"
        yield Conflict((key,), f"method {config['method']} keeps Adam at train.lr: a learning-"
                       f"rate schedule applies to {', '.join(methods)}",
                       "set train.lr_decay: constant and train.lr_warmup: 0, or another method")


def shared_conflicts(config: dict, input_word: str):
    """The cross-key problems of the shared sections, for a family's conflict check to yield
    first; `input_word` names the family's input in messages ("sentence", "image")."""
    em = config["em"]
    if em["threshold_min"] > em["threshold_max"]:
        yield Conflict(("em.threshold_min", "em.threshold_max"),
                       f"em.threshold_min ({em['threshold_min']:g}) is above em.threshold_max "
                       f"({em['threshold_max']:g}); the threshold decays from max to min",
                       "swap them, or set both equal for a constant threshold")
    if em["alternate_every"] and em["mstep_reuse_samples"]:
        yield Conflict(("em.alternate_every", "em.mstep_reuse_samples"),
                       "em.mstep_reuse_samples: true fits the E-step's latents, but an M phase "
                       "(em.alternate_every) runs no E-step", "set em.mstep_reuse_samples: false")
    if em["alternate_every"] and (em["threshold_max"], em["threshold_min"]) != (math.inf,
                                                                                math.inf):
        yield Conflict(("em.alternate_every", "em.threshold_max"),
                       "em.alternate_every replaces the E-loss gate, which would be ignored",
                       "set em.threshold_max and em.threshold_min to .inf, or "
                       "em.alternate_every: 0")
    if em["mstep_reuse_samples"] and em["mstep_temperature"] != 1.0:
        yield Conflict(("em.mstep_reuse_samples", "em.mstep_temperature"),
                       f"em.mstep_temperature ({em['mstep_temperature']:g}) shapes fresh M-step "
                       "draws, but em.mstep_reuse_samples: true fits the E-step's latents",
                       "set em.mstep_reuse_samples: false, or leave em.mstep_temperature at 1")
    name, n = config["objective"]["name"], config["sampler"]["samples_per_input"]
    if config["method"] == "gfnem" and name in DIVERGENCES + ("vargrad",) and n < 2:
        yield Conflict(("sampler.samples_per_input", "objective.name"),
                       f"objective {name} compares the trajectories of one {input_word}: it "
                       f"needs sampler.samples_per_input >= 2, got {n}",
                       "e.g. sampler.samples_per_input: 8")


def em_options_from_config(config: dict):
    """The `em` section's gate (τ linear from threshold_max to threshold_min over
    threshold_horizon model updates, EMA of the E-loss) and M-step draws, with `train`'s clip."""
    from gfnem_cli.engine.em import EMOptions
    from gfnem_cli.engine.schedules import ThresholdSchedule

    em = config["em"]
    return EMOptions(
        threshold=ThresholdSchedule(float(em["threshold_max"]), float(em["threshold_min"]),
                                    int(em["threshold_horizon"])),
        ema_decay=em["ema_decay"], mstep_samples=em["mstep_samples"],
        importance_weighted=em["importance_weighted"],
        model_grad_clip=config["train"]["grad_clip"], alternate_every=em["alternate_every"],
        lr_schedule=lr_schedule_from_config(config))


def model_optimizer_from_config(config: dict, parameters):
    """Adam on θ with `train.lr` and `train.betas`: the M-step's optimizer in every EM method."""
    import torch

    train = config["train"]
    return torch.optim.Adam(parameters, lr=train["lr"], betas=tuple(train["betas"]))


def lr_schedule_from_config(config: dict) -> LearningRateSchedule:
    """θ's learning rate as a function of its update count; the horizon defaults to the run's
    update cap, else its steps (one model update per step at most)."""
    train = config["train"]
    horizon = train["lr_horizon"] or train["max_model_updates"] or train["steps"]
    return LearningRateSchedule(base=float(train["lr"]), decay=train["lr_decay"],
                                warmup=int(train["lr_warmup"]), horizon=int(horizon),
                                final=float(train["lr_final"]))


def exploration_from_config(section: dict) -> Exploration:
    return Exploration(temperature=section["temperature"], epsilon=section["epsilon"],
                       local_search_rounds=section["local_search_rounds"],
                       local_search_steps=section["local_search_steps"],
                       local_search_loss=section["local_search_loss"])


def objective_from_config(config: dict, learned_backward: bool):
    """(the objective the `objective` section names, whether it needs per-step flows).

    The divergences keep P_B fixed: they are refused with a learned backward policy."""
    o = config["objective"]
    name = objective_name(o["name"])
    options: dict = {}
    if name == "subtb":
        options["lambda"] = o["lambda"]
    if name in DIVERGENCES:
        options.update(control_variate=o["control_variate"],
                       importance_weighting=o["importance_weighting"])
        if name in ("renyi", "tsallis"):
            options["alpha"] = o["alpha"]
        if name == "tsallis":
            options["max_log_weight"] = o["max_log_weight"]
        if learned_backward:
            raise GfnemError(f"objective {name} keeps P_B fixed: it needs a uniform backward "
                             "policy", hint="set sampler.learn_backward: false")
    return build_objective(name, **options), name in NEEDS_FLOWS
