"""Every key a grammar recipe may set, with its default and its range: the schema recipes and
`--set` are checked against (the range words are the engine's, `engine/recipe_schema.py`).

The defaults are Kim et al. (2019)'s neural PCFG trained by exact marginal likelihood;
recipes in `recipes/` override what their configuration changes. `GRAMMAR_DEFAULTS` is the
plain tree of defaults every run reads; `GRAMMAR_RANGES` the `{dotted key: check}` table.
"""
from __future__ import annotations

from gfnem_cli.engine.objectives.divergences import CONTROL_VARIATES
from gfnem_cli.engine.objectives.from_recipe import (
    DIVERGENCES, GRAD_CLIP, LEARNING_RATE, OBJECTIVE_NAMES, em_section, exploration_section,
    extend, lr_schedule_conflicts, objective_section, shared_conflicts, train_section)
from gfnem_cli.engine.recipe_schema import (AT_LEAST_ONE, BETAS, BOOLEAN, COUNT, NAME,
                                            NON_NEGATIVE, POSITIVE, PROBABILITY, TEXT, Conflict,
                                            Integer, Key, OneOf, Schema, ZeroOr,
                                            register_schema, split_schema)

# the choices each string key's consumer accepts (kept in step with them by a test)
METHODS = ("marginal", "gfnem", "exact-sampling", "mcem",   # grammars.run, training.em_methods
           "shape-ebm")                                      # (shape-ebm: grammars.shape_prior)
PRIOR_SCHEDULES = ("geometric", "linear")                    # shape_prior.reward.SCHEDULES
KINDS = ("npcfg", "cpcfg", "ncfg")                           # grammars.models.KINDS
INSIDE = ("ours", "torch-struct")                            # grammars.charts.backends
OBJECTIVES = OBJECTIVE_NAMES                                 # gfnem_cli.engine.objectives
MSTEP_LABELS = ("sampled", "summed")                         # training.em_methods.MSTEP_LABELS
LOCAL_SEARCH_K = ("fixed", "uniform")                       # gflownet.local_search.K_DRAWS
SELECT_METRICS = ("val_nll_per_token", "val_sentence_f1",    # the NLL (lower is better), or
                  "val_corpus_f1")                           # training.validation_f1.F1_METRICS
__all__ = ["CONTROL_VARIATES", "DIVERGENCES", "GRAMMAR", "GRAMMAR_DEFAULTS", "GRAMMAR_RANGES",
           "INSIDE", "KINDS", "LOCAL_SEARCH_K", "METHODS", "MSTEP_LABELS", "OBJECTIVES", "PRIOR_SCHEDULES",
           "SELECT_METRICS"]

LENGTH_CAP = ZeroOr(Integer(lo=2), "no cap")   # a cap of 1 leaves no sentence to train on

GRAMMAR_SCHEMA: dict = {
    "family": Key("grammar", OneOf("grammar")),
    "data": {
        "path": Key("", TEXT),            # a folder written by `gfnem prepare`; relative to the cwd
        "train_split": Key("train", NAME),
        "valid_split": Key("valid", NAME),
        "max_train_length": Key(40, LENGTH_CAP),   # 0 = no cap
        "max_valid_sentences": Key(0, COUNT),      # 0 = the whole split
        "max_valid_f1_sentences": Key(200, COUNT),  # validation F1 on the first this many of
                                    # those sentences; 0 = all of them. Viterbi costs ~20x the
                                    # inside pass (CPU), so F1 on 200 PTB sentences adds ~10%
                                    # to a run validated every 1,000 steps
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
    # the engine's train section (Kim et al.'s Adam for the grammar) and a length curriculum
    "train": {**train_section(batch_size=4, lr=1e-3, betas=(0.75, 0.999), grad_clip=3.0),
              "curriculum_start": Key(0, ZeroOr(Integer(lo=2), "off")),  # else admit start +
              "curriculum_increment": Key(1, COUNT),                     # epoch * increment words
              # bracketing F1 at every validation where the split has gold trees
              "valid_f1": Key(True, BOOLEAN),
              # what best.pt is chosen by: the NLL (lowest; the peers' choice) or an F1 (highest)
              "select_metric": Key("val_nll_per_token", OneOf(*SELECT_METRICS))},
    # ---- methods gfnem / exact-sampling / mcem (grammars.training.em_methods)
    "sampler": {                          # the tree GFlowNet (method gfnem)
        "d_model": Key(512, AT_LEAST_ONE),        # Transformer width (paper: 512)
        "num_layers": Key(6, AT_LEAST_ONE),       # paper: 6
        "num_heads": Key(4, AT_LEAST_ONE),        # paper: 4; must divide d_model
        "dim_feedforward": Key(0, COUNT),         # 0 = 4 * d_model
        "learn_backward": Key(True, BOOLEAN),     # learned P_B (TB/SubTB/DB); divergences
                                                  # need false (uniform)
        **exploration_section(),                  # samples_per_input .. local_search_steps
        "local_search_k": Key("fixed", OneOf(*LOCAL_SEARCH_K)),  # fixed: k = local_search_steps
                                    # every round; uniform: each round draws k ~ U{1,
                                    # local_search_steps} for the batch (the authors' code)
        "local_search_continue": Key(False, BOOLEAN),  # with em.mstep_reuse_samples, the
                                    # M-step's rounds continue the E-step's local-search chain
                                    # (the authors' code: its rounds are one chain)
        "lr_policy": Key(1e-4, LEARNING_RATE),    # encoder, P_F, P_B heads (paper: 1e-4)
        "lr_flows": Key(3e-3, LEARNING_RATE),     # log-flow and log Z heads (paper: 3e-3)
        "betas": Key([0.9, 0.99], BETAS),
        "grad_clip": Key(3.0, GRAD_CLIP),
    },
    "objective": objective_section(),
    "em": extend(extend(em_section(), "importance_weighted", {
        "mstep_labels": Key("sampled", OneOf(*MSTEP_LABELS)),  # sampled: M-step on
                                    # log p(x, z); summed: on log p(x, s), the labels of each
                                    # tree's bracketing s summed out
    }), "sleep_batch_size", {
        "sleep_max_length": Key(0, ZeroOr(Integer(lo=2), "data.max_train_length")),  # dreams
                                    # of at most this many words
        # method gfnem: a tree-shape prior in the sampler's reward (Hu et al. 2023 §5.2),
        # log R = log p(x, z) - E(shape(z)) / T; the run directory of a `method: shape-ebm`
        # run (relative to the cwd), "" = none. The M-step still maximizes log p(x, z).
        "shape_prior": Key("", TEXT),
        "shape_prior_temperature_start": Key(1.0, POSITIVE),    # T at grammar update 0 ...
        "shape_prior_temperature_end": Key(1000.0, POSITIVE),   # ... and from the horizon on
        "shape_prior_temperature_horizon": Key(0, COUNT),       # grammar updates; 0 = train.
                                                                # max_model_updates (the run)
        "shape_prior_schedule": Key("geometric", OneOf(*PRIOR_SCHEDULES)),  # the authors' exp
    }),
    "shape_ebm": {                        # method shape-ebm (grammars.shape_prior): the prior
        "dim": Key(16, AT_LEAST_ONE),             # node vector width (the authors': 16)
        "length_conditioned": Key(True, BOOLEAN),  # the read-out also sees log n, n/20
        "mh_steps": Key(1, AT_LEAST_ONE),         # rotation MH steps per chain per step
        "reset_prob": Key(0.5, PROBABILITY),      # chain restarts at a gold shape (authors: 0.5)
        "energy_l2": Key(0.01, NON_NEGATIVE),     # + l2 * mean(E+^2 + E-^2) (authors: 0)
        "valid_mh_steps": Key(100, AT_LEAST_ONE),  # validation chains' length
    },
    "mcem": {                             # method mcem (grammars.training.mcem)
        "steps": Key(100, AT_LEAST_ONE),          # MH steps per training step (paper: 1000)
        "rotation_prob": Key(0.5, PROBABILITY),   # else relabel a node
    },
}

GRAMMAR_DEFAULTS, GRAMMAR_RANGES = split_schema(GRAMMAR_SCHEMA)


def grammar_conflicts(config: dict):
    """Cross-key problems, each reported at the key the user most likely has to change."""
    sampler, name = config["sampler"], config["objective"]["name"]
    gfnem = config["method"] == "gfnem"
    if gfnem and name in DIVERGENCES and sampler["learn_backward"]:
        yield Conflict(("objective.name", "sampler.learn_backward"),
                       f"objective {name} keeps P_B fixed: it needs sampler.learn_backward: "
                       "false (a uniform backward policy)",
                       "set sampler.learn_backward: false")
    yield from shared_conflicts(config, "sentence")
    yield from lr_schedule_conflicts(config, METHODS[:4])       # shape-ebm keeps its own Adam
    train = config["train"]
    if train["select_metric"] != SELECT_METRICS[0] and not train["valid_f1"]:
        yield Conflict(("train.select_metric", "train.valid_f1"),
                       f"train.select_metric {train['select_metric']} needs the validation F1, "
                       "which train.valid_f1: false turns off",
                       "set train.valid_f1: true, or train.select_metric: val_nll_per_token")
    yield from _prior_conflicts(config)
    if gfnem and sampler["d_model"] % sampler["num_heads"]:
        yield Conflict(("sampler.num_heads", "sampler.d_model"),
                       f"sampler.num_heads ({sampler['num_heads']}) must divide sampler.d_model "
                       f"({sampler['d_model']})", "e.g. d_model: 512 with num_heads: 4")


def _prior_conflicts(config: dict):
    em = config["em"]
    if not em["shape_prior"]:
        return
    if config["method"] != "gfnem":
        yield Conflict(("em.shape_prior", "method"),
                       f"em.shape_prior tilts the tree GFlowNet's reward; method "
                       f"{config['method']} has no sampler to read it",
                       "set method: gfnem, or em.shape_prior: ''")
    elif not (em["shape_prior_temperature_horizon"] or config["train"]["max_model_updates"]):
        yield Conflict(("em.shape_prior_temperature_horizon", "train.max_model_updates"),
                       "em.shape_prior_temperature_horizon: 0 anneals over "
                       "train.max_model_updates, which is 0 (no cap)",
                       "set em.shape_prior_temperature_horizon to a number of grammar updates, "
                       "or train.max_model_updates")


GRAMMAR = Schema(GRAMMAR_DEFAULTS, GRAMMAR_RANGES, grammar_conflicts)
register_schema(GRAMMAR)
