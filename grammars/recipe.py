"""Every key a grammar recipe may set, with its default and its range: the schema recipes and
`--set` are checked against (the range words are the engine's, `engine/recipe_schema.py`).

The defaults are Kim et al. (2019)'s neural PCFG trained by exact marginal likelihood;
recipes in `recipes/` override what their configuration changes. `GRAMMAR_DEFAULTS` is the
plain tree of defaults every run reads; `GRAMMAR_RANGES` the `{dotted key: check}` table.
"""
from __future__ import annotations

from gfnem_cli.engine.recipe_schema import (
    ANY_THRESHOLD, AT_LEAST_ONE, BETAS, BOOLEAN, COUNT, NAME, NON_NEGATIVE, POSITIVE,
    POSITIVE_OR_INF, PROBABILITY, SEED, TEXT, UNIT_INTERVAL_OPEN, Conflict, Integer, Key, OneOf,
    Real, Schema, ZeroOr, register_schema, split_schema)

# the choices each string key's consumer accepts (kept in step with them by a test)
METHODS = ("marginal", "gfnem", "exact-sampling", "mcem")   # grammars.run, em_methods
KINDS = ("npcfg", "cpcfg", "ncfg")                           # grammars.models.KINDS
INSIDE = ("ours", "torch-struct")                            # grammars.inside.get_backend
OBJECTIVES = ("tb", "subtb", "db", "vargrad", "reverse_kl", "forward_kl", "renyi", "tsallis")
DIVERGENCES = ("reverse_kl", "forward_kl", "renyi", "tsallis")
CONTROL_VARIATES = ("loo", "batch", "none")                  # objectives.divergences
MSTEP_LABELS = ("sampled", "summed")                         # em_methods.MSTEP_LABELS

LENGTH_CAP = ZeroOr(Integer(lo=2), "no cap")   # a cap of 1 leaves no sentence to train on
GRAD_CLIP = Real(gt=0, finite=False)           # max gradient norm; .inf = no clipping
LEARNING_RATE = POSITIVE


def _objective_name(text: str) -> str:
    return text.lower().replace("-", "_")      # as em_methods reads it: 'Reverse-KL' works


GRAMMAR_SCHEMA: dict = {
    "family": Key("grammar", OneOf("grammar")),
    "data": {
        "path": Key("", TEXT),            # a folder written by `gfnem prepare`; relative to the cwd
        "train_split": Key("train", NAME),
        "valid_split": Key("valid", NAME),
        "max_train_length": Key(40, LENGTH_CAP),   # 0 = no cap
        "max_valid_sentences": Key(0, COUNT),      # 0 = the whole split
    },
    "model": {
        "kind": Key("npcfg", OneOf(*KINDS)),
        "nonterminals": Key(30, AT_LEAST_ONE),
        "preterminals": Key(60, AT_LEAST_ONE),
        "symbol_dim": Key(256, AT_LEAST_ONE),
        "z_dim": Key(64, AT_LEAST_ONE),           # cpcfg only: the sentence latent
        "word_dim": Key(512, AT_LEAST_ONE),       # cpcfg only: inference-network word embeddings
        "lstm_dim": Key(512, AT_LEAST_ONE),       # cpcfg only: inference-network BiLSTM width
    },
    "method": Key("marginal", OneOf(*METHODS)),
    "inside": Key("ours", OneOf(*INSIDE)),
    "train": {
        "steps": Key(1000, AT_LEAST_ONE),
        "max_model_updates": Key(0, COUNT),   # also stop after this many grammar (M-step)
                                              # updates; 0 = no cap. Compares EM methods at
                                              # equal grammar updates.
        "batch_size": Key(4, AT_LEAST_ONE),
        "lr": Key(1e-3, LEARNING_RATE),
        "betas": Key([0.75, 0.999], BETAS),
        "grad_clip": Key(3.0, GRAD_CLIP),
        "seed": Key(0, SEED),
        "eval_every": Key(200, AT_LEAST_ONE),
        "checkpoint_every": Key(100, AT_LEAST_ONE),
        "eval_batch_size": Key(16, AT_LEAST_ONE),
        "curriculum_start": Key(0, ZeroOr(Integer(lo=2), "off")),  # else admit start + epoch *
        "curriculum_increment": Key(1, COUNT),                     # increment words
    },
    # ---- methods gfnem / exact-sampling / mcem (grammars.em_methods); train.lr, train.betas
    # and train.grad_clip are the grammar's (M-step) optimizer in every method.
    "sampler": {                          # the tree GFlowNet (method gfnem)
        "d_model": Key(512, AT_LEAST_ONE),        # Transformer width (paper: 512)
        "num_layers": Key(6, AT_LEAST_ONE),       # paper: 6
        "num_heads": Key(4, AT_LEAST_ONE),        # paper: 4; must divide d_model
        "dim_feedforward": Key(0, COUNT),         # 0 = 4 * d_model
        "learn_backward": Key(True, BOOLEAN),     # learned P_B (TB/SubTB/DB); divergences
                                                  # need false (uniform)
        "samples_per_input": Key(1, AT_LEAST_ONE),  # N per sentence (>= 2 for vargrad,
                                                    # divergences)
        "temperature": Key(1.0, POSITIVE),        # E-step exploration: tempered behaviour
                                                  # policy (paper 1.1)
        "epsilon": Key(0.0, PROBABILITY),         # E-step exploration: epsilon-uniform mixing
        "local_search_rounds": Key(0, COUNT),     # E-step: also train on local-search samples
        "local_search_steps": Key(4, AT_LEAST_ONE),   # k backward (and forward) steps a round
        "lr_policy": Key(1e-4, LEARNING_RATE),    # encoder, P_F, P_B heads (paper: 1e-4)
        "lr_flows": Key(3e-3, LEARNING_RATE),     # log-flow and log Z heads (paper: 3e-3)
        "betas": Key([0.9, 0.99], BETAS),
        "grad_clip": Key(3.0, GRAD_CLIP),
    },
    "objective": {                        # the E-step loss (gfnem_cli.engine.objectives)
        "name": Key("tb", OneOf(*OBJECTIVES, fold=_objective_name)),
        "lambda": Key(0.9, POSITIVE),             # subtb only
        "alpha": Key(0.5, Real(gt=0, exclude=(1.0,))),  # renyi, tsallis (alpha -> 1: reverse_kl)
        "control_variate": Key("loo", OneOf(*CONTROL_VARIATES)),  # divergences
        "importance_weighting": Key(False, BOOLEAN),  # divergences: off-policy, reweighted
        "max_log_weight": Key(20.0, Real(gt=0, lt=80)),   # tsallis only (exp must not overflow)
    },
    "em": {
        # M-step only while EMA(E-loss) < tau(g), tau linear from threshold_max to
        # threshold_min over threshold_horizon grammar updates g. On the E-loss scale of the
        # chosen objective (TB: mean squared log-ratio, nats^2). .inf = every step; -.inf for
        # both = never (E-step only).
        "threshold_max": Key(6.0, ANY_THRESHOLD),
        "threshold_min": Key(3.0, ANY_THRESHOLD),
        "threshold_horizon": Key(10000, COUNT),   # 0 = threshold_min from the start
        "ema_decay": Key(0.9, UNIT_INTERVAL_OPEN),
        "mstep_samples": Key(1, AT_LEAST_ONE),    # trees per sentence in the M-step
        "mstep_temperature": Key(1.0, POSITIVE),  # policy temperature of fresh M-step draws
        "mstep_reuse_samples": Key(False, BOOLEAN),   # M-step on the E-step's trees (paper code)
        "mstep_local_search_rounds": Key(0, COUNT),   # local-search rounds on M-step trees
                                                      # (paper: 10)
        "importance_weighted": Key(False, BOOLEAN),   # M-step weights softmax(log p + log P_B
                                                      # - log q)
        "mstep_labels": Key("sampled", OneOf(*MSTEP_LABELS)),  # sampled: M-step on
                                    # log p(x, z); summed: on log p(x, s), the labels of each
                                    # tree's bracketing s summed out
        "sleep_weight": Key(0.0, NON_NEGATIVE),   # sleep phase: weight of -log P_F on dreams
        "sleep_period": Key(1, AT_LEAST_ONE),     # ... every this many steps
        "sleep_batch_size": Key(0, COUNT),        # ... this many dreams (0 = train.batch_size)
        "sleep_max_length": Key(0, ZeroOr(Integer(lo=2), "data.max_train_length")),  # ... of
                                    # at most this many words
        "valid_samples": Key(16, AT_LEAST_ONE),   # M of the importance-sampled bound (non-CFG)
    },
    "mcem": {                             # method mcem (grammars.mcem)
        "steps": Key(100, AT_LEAST_ONE),          # MH steps per training step (paper: 1000)
        "rotation_prob": Key(0.5, PROBABILITY),   # else relabel a node
    },
}

GRAMMAR_DEFAULTS, GRAMMAR_RANGES = split_schema(GRAMMAR_SCHEMA)


def grammar_conflicts(config: dict):
    """Cross-key problems, each reported at the key the user most likely has to change."""
    em, sampler, objective = config["em"], config["sampler"], config["objective"]
    if em["threshold_min"] > em["threshold_max"]:
        yield Conflict(("em.threshold_min", "em.threshold_max"),
                       f"em.threshold_min ({em['threshold_min']:g}) is above em.threshold_max "
                       f"({em['threshold_max']:g}); the threshold decays from max to min",
                       "swap them, or set both equal for a constant threshold")
    if config["method"] != "gfnem":
        return
    name = objective["name"]
    if name in DIVERGENCES and sampler["learn_backward"]:
        yield Conflict(("objective.name", "sampler.learn_backward"),
                       f"objective {name} keeps P_B fixed: it needs sampler.learn_backward: "
                       "false (a uniform backward policy)",
                       "set sampler.learn_backward: false")
    if name in DIVERGENCES + ("vargrad",) and sampler["samples_per_input"] < 2:
        yield Conflict(("sampler.samples_per_input", "objective.name"),
                       f"objective {name} compares the trajectories of one sentence: it needs "
                       f"sampler.samples_per_input >= 2, got {sampler['samples_per_input']}",
                       "e.g. sampler.samples_per_input: 8")
    if sampler["d_model"] % sampler["num_heads"]:
        yield Conflict(("sampler.num_heads", "sampler.d_model"),
                       f"sampler.num_heads ({sampler['num_heads']}) must divide sampler.d_model "
                       f"({sampler['d_model']})", "e.g. d_model: 512 with num_heads: 4")


GRAMMAR = Schema(GRAMMAR_DEFAULTS, GRAMMAR_RANGES, grammar_conflicts)
register_schema(GRAMMAR)
