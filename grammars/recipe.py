"""Every key a grammar recipe may set, with its default: the schema `--set` is checked against.

The defaults are Kim et al. (2019)'s neural PCFG trained by exact marginal likelihood;
recipes in `recipes/` override what their configuration changes.
"""
from __future__ import annotations

GRAMMAR_DEFAULTS: dict = {
    "family": "grammar",
    "data": {
        "path": "",                 # a folder written by `gfnem prepare`; relative to the recipe's cwd
        "train_split": "train",
        "valid_split": "valid",
        "max_train_length": 40,     # 0 = no cap
        "max_valid_sentences": 0,   # 0 = the whole split
    },
    "model": {
        "kind": "npcfg",            # npcfg | cpcfg | ncfg
        "nonterminals": 30,
        "preterminals": 60,
        "symbol_dim": 256,
        "z_dim": 64,                # cpcfg only: the sentence latent
        "word_dim": 512,            # cpcfg only: inference-network word embeddings
        "lstm_dim": 512,            # cpcfg only: inference-network BiLSTM width
    },
    "method": "marginal",           # marginal | gfnem | exact-sampling | mcem
    "inside": "ours",               # ours | torch-struct
    "train": {
        "steps": 1000,
        "max_model_updates": 0,     # also stop after this many grammar (M-step) updates; 0 = no
                                    # cap. Compares EM methods at equal grammar updates.
        "batch_size": 4,
        "lr": 1e-3,
        "betas": [0.75, 0.999],
        "grad_clip": 3.0,
        "seed": 0,
        "eval_every": 200,
        "checkpoint_every": 100,
        "eval_batch_size": 16,
        "curriculum_start": 0,      # 0 = off; else admit start + epoch * increment words
        "curriculum_increment": 1,
    },
    # ---- methods gfnem / exact-sampling / mcem (grammars.em_methods); train.lr, train.betas
    # and train.grad_clip are the grammar's (M-step) optimizer in every method.
    "sampler": {                    # the tree GFlowNet (method gfnem)
        "d_model": 512,             # Transformer width (paper: 512)
        "num_layers": 6,            # paper: 6
        "num_heads": 4,             # paper: 4
        "dim_feedforward": 0,       # 0 = 4 * d_model
        "learn_backward": True,     # learned P_B (TB/SubTB/DB); divergences need false (uniform)
        "samples_per_input": 1,     # N trajectories per sentence (>= 2 for vargrad, divergences)
        "temperature": 1.0,         # E-step exploration: tempered behaviour policy (paper 1.1)
        "epsilon": 0.0,             # E-step exploration: epsilon-uniform mixing
        "local_search_rounds": 0,   # E-step: also train on back-and-forth local-search samples
        "local_search_steps": 4,    # k backward (and forward) steps of one local-search round
        "lr_policy": 1e-4,          # encoder, P_F, P_B heads (paper: 1e-4)
        "lr_flows": 3e-3,           # log-flow and log Z heads (paper: 3e-3)
        "betas": [0.9, 0.99],
        "grad_clip": 3.0,
    },
    "objective": {                  # the E-step loss (gfnem_cli.engine.objectives)
        "name": "tb",               # tb | subtb | db | vargrad | reverse_kl | forward_kl |
                                    # renyi | tsallis
        "lambda": 0.9,              # subtb only
        "alpha": 0.5,               # renyi, tsallis
        "control_variate": "loo",   # divergences: loo | batch | none
        "importance_weighting": False,  # divergences: allow off-policy samples, reweighted
        "max_log_weight": 20.0,     # tsallis only
    },
    "em": {
        # M-step only while EMA(E-loss) < tau(g), tau linear from threshold_max to
        # threshold_min over threshold_horizon grammar updates g. On the E-loss scale of the
        # chosen objective (TB: mean squared log-ratio, nats^2). .inf = every step.
        "threshold_max": 6.0,
        "threshold_min": 3.0,
        "threshold_horizon": 10000,
        "ema_decay": 0.9,
        "mstep_samples": 1,         # trees per sentence in the M-step
        "mstep_temperature": 1.0,   # policy temperature of fresh M-step draws
        "mstep_reuse_samples": False,   # M-step on the E-step's trees (as the paper's code)
        "mstep_local_search_rounds": 0,  # local-search rounds on M-step trees (paper: 10)
        "importance_weighted": False,   # M-step weights softmax(log p + log P_B - log q)
        "mstep_labels": "sampled",  # sampled: M-step on log p(x, z); summed: on log p(x, s),
                                    # the labels of each tree's bracketing s summed out
        "sleep_weight": 0.0,        # sleep phase: weight of -log P_F on trees dreamt by the grammar
        "sleep_period": 1,          # ... every this many steps
        "sleep_batch_size": 0,      # ... this many dreams (0 = train.batch_size)
        "sleep_max_length": 0,      # ... of at most this many words (0 = data.max_train_length)
        "valid_samples": 16,        # M of the importance-sampled validation bound (non-CFG)
    },
    "mcem": {                       # method mcem (grammars.mcem)
        "steps": 100,               # Metropolis-Hastings steps per training step (paper: 1000)
        "rotation_prob": 0.5,       # else relabel a node
    },
}
