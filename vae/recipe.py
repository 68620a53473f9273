"""Every key an image recipe may set, with its default and its range (family `vae`).

Built from the engine's shared sections (`train`, `objective`, `em`, the sampler's exploration
keys) plus the image family's own: the data set, the discrete VAE (grid, K, dictionary width
D, decoder channels, prior), the grid GFlowNet, and the baselines' options. The defaults are
the paper's MNIST settings (Hu et al. 2023: batch 128, 128 channels, GFlowNet lr 2e-4,
log Z lr 0.1, decoder lr 2e-4, D = 1).

The paper's sleep phase runs with probability 0.3 per step; the engine's sleep phase is
deterministic (`em.sleep_weight` every `em.sleep_period` steps), so the recipes use
sleep_weight 0.3 every step: the same expected gradient, with less variance.
`em.mstep_temperature` well below 1 approximates the paper's greedy decoder updates.
"""
from __future__ import annotations

from gfnem_cli.engine.objectives.from_recipe import (
    GRAD_CLIP, LEARNING_RATE, em_section, exploration_section, objective_section,
    lr_schedule_conflicts, shared_conflicts, train_section)
from gfnem_cli.engine.recipe_schema import (AT_LEAST_ONE, BETAS, COUNT, NAME, POSITIVE,
                                            TEXT, Conflict, Integer, Key, ListOf,
                                            OneOf, Real, Schema, register_schema, split_schema)

METHODS = ("gfnem", "vqvae", "gumbel", "reinforce", "exact_em")   # vae.training.em_methods
ORDERS = ("raster", "any")                                       # vae.gflownet.ORDERS
PRIORS = ("uniform", "autoregressive")                           # vae.models.build_prior
MAX_EXACT_GRIDS = 4096                                           # exact_em's K^(hw) limit
__all__ = ["VAE", "VAE_DEFAULTS", "VAE_RANGES", "METHODS", "ORDERS", "PRIORS"]

VAE_SCHEMA: dict = {
    "family": Key("vae", OneOf("vae")),
    "data": {
        "path": Key("", TEXT),                 # a folder written by `gfnem prepare shapes|mnist`
        "train_split": Key("train", NAME),
        "valid_split": Key("valid", NAME),
        "max_valid_images": Key(1000, COUNT),  # validation on the first this many (0 = all)
    },
    "model": {
        "grid": Key([4, 4], ListOf(Integer(lo=1), 2, describe="two integers >= 1, e.g. [4, 4]")),
        "num_codes": Key(4, Integer(lo=2, hi=256)),   # K (paper: 4, 8, 10)
        "embedding_dim": Key(1, AT_LEAST_ONE),        # D of the code dictionary (paper: 1)
        "channels": Key(128, AT_LEAST_ONE),           # decoder width (paper: 128)
        "residual_blocks": Key(2, COUNT),
        "prior": Key("uniform", OneOf(*PRIORS)),
        "prior_channels": Key(64, AT_LEAST_ONE),      # autoregressive prior only
        "prior_layers": Key(3, AT_LEAST_ONE),
    },
    "method": Key("gfnem", OneOf(*METHODS)),
    # train.lr / betas / grad_clip: the decoder's (and prior's) Adam, in every method
    "train": train_section(batch_size=128, lr=2e-4, betas=(0.9, 0.999),
                           grad_clip=float("inf"), eval_every=500, checkpoint_every=500),
    "sampler": {                               # the grid GFlowNet (method gfnem)
        "order": Key("raster", OneOf(*ORDERS)),
        "channels": Key(128, AT_LEAST_ONE),
        "blocks": Key(2, COUNT),
        **exploration_section(),
        "lr": Key(2e-4, LEARNING_RATE),        # trunk and policy (paper: 2e-4)
        "log_z_lr": Key(0.1, LEARNING_RATE),   # the log Z_φ(x) head (paper: 0.1)
        "betas": Key([0.9, 0.999], BETAS),
        "grad_clip": Key(float("inf"), GRAD_CLIP),
    },
    "objective": objective_section(),
    # the M-step gate on the E-loss (TB: nats^2); valid_samples = M of the validation NLL
    "em": em_section(threshold_max=float("inf"), threshold_min=float("inf"),
                     threshold_horizon=0),
    "baseline": {                              # methods vqvae, gumbel, reinforce, exact_em
        "encoder_channels": Key(64, AT_LEAST_ONE),
        "encoder_lr": Key(2e-4, LEARNING_RATE),
        "commitment": Key(0.25, Real(ge=0)),        # vqvae: β
        "ema_decay": Key(0.999, Real(ge=0, lt=1)),  # vqvae: codebook EMA γ
        "tau0": Key(1.0, POSITIVE),                 # gumbel: τ = max(τ_min, τ0·exp(−r·step))
        "tau_min": Key(0.5, POSITIVE),
        "anneal_rate": Key(1e-4, Real(ge=0)),
        "samples": Key(4, AT_LEAST_ONE),            # reinforce: N (>= 2)
        "valid_samples": Key(1, AT_LEAST_ONE),      # draws of the validation ELBO
        "gumbel_samples": Key(1, AT_LEAST_ONE),     # gumbel: draws per image
    },
}

VAE_DEFAULTS, VAE_RANGES = split_schema(VAE_SCHEMA)


def vae_conflicts(config: dict):
    """Cross-key problems, each placed at the key the user most likely has to change."""
    sampler, model = config["sampler"], config["model"]
    yield from shared_conflicts(config, "image")
    yield from lr_schedule_conflicts(config, ("gfnem",))         # the baselines keep their Adam
    method = config["method"]
    if method == "gfnem" and sampler["local_search_rounds"]:
        yield Conflict(("sampler.local_search_rounds",),
                       "the grid GFlowNet has no local search", "set it to 0")
    if method == "reinforce" and config["baseline"]["samples"] < 2:
        yield Conflict(("baseline.samples", "method"),
                       "REINFORCE's leave-one-out baseline needs baseline.samples >= 2",
                       "Kool et al. use 4")
    cells = model["grid"][0] * model["grid"][1]
    if method == "exact_em" and model["num_codes"] ** cells > MAX_EXACT_GRIDS:
        yield Conflict(("method", "model.grid", "model.num_codes"),
                       f"exact_em sums over K^(hw) = {model['num_codes']}^{cells} grids, more "
                       f"than {MAX_EXACT_GRIDS:,}", "use model.grid: [2, 2], or another method")


VAE = Schema(VAE_DEFAULTS, VAE_RANGES, vae_conflicts)
register_schema(VAE)
