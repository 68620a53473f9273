"""A resolved image recipe -> the trainer `Method` (DESIGN.md §4, §7).

- `gfnem`: the engine's `EMLoop` with `ImageFamily` (DiscreteVAE θ + GridSampler φ), the
  recipe's objective, the adaptive M-step gate and the sleep phase; the sampler's Adam has two
  groups (trunk + policy at `sampler.lr`, the log Z_φ(x) head at `sampler.log_z_lr`, as the
  paper). Validation: the importance-sampled NLL per image with `em.valid_samples` draws from
  the sampler (`vae.evaluation.likelihood`), `val_nll_nats` selecting best.pt.
- `vqvae`, `gumbel`, `reinforce`, `exact_em`: the baselines of `vae.training.baselines`,
  built from the `baseline` section, on the same decoder.
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import (EMLoop, GfnemError, GFlowNetEStep, em_options_from_config,
                              exploration_from_config, model_optimizer_from_config,
                              objective_from_config)
from vae.evaluation.likelihood import importance_sampled_nll
from vae.gflownet import GridSampler
from vae.models import Decoder, DiscreteVAE, build_prior
from vae.training.baselines import BASELINES, FactorizedEncoder
from vae.training.family import ImageFamily

SELECT_METRIC = "val_nll_nats"


def build_vae(config: dict, image_shape) -> DiscreteVAE:
    m = config["model"]
    grid = tuple(m["grid"])
    try:
        decoder = Decoder(m["num_codes"], grid, tuple(image_shape), m["embedding_dim"],
                          m["channels"], m["residual_blocks"])
    except ValueError as exc:
        raise GfnemError(f"model.grid {list(grid)} does not fit {tuple(image_shape)} images: "
                         f"{exc}", hint="e.g. model.grid: [4, 4] for 28x28 images") from None
    options = ({} if m["prior"] == "uniform"
               else {"channels": m["prior_channels"], "layers": m["prior_layers"]})
    return DiscreteVAE(decoder, build_prior(m["prior"], m["num_codes"], grid, **options))


def build_sampler(config: dict) -> GridSampler:
    s, m = config["sampler"], config["model"]
    return GridSampler(m["num_codes"], tuple(m["grid"]), s["order"], s["channels"], s["blocks"])


def build_encoder(config: dict) -> FactorizedEncoder:
    """The baselines' factorized encoder: K logits per cell, or D-vectors for VQ-VAE."""
    m = config["model"]
    outputs = m["embedding_dim"] if config["method"] == "vqvae" else m["num_codes"]
    return FactorizedEncoder(outputs, tuple(m["grid"]), config["baseline"]["encoder_channels"])


def sampler_optimizer(sampler: GridSampler, config: dict) -> torch.optim.Adam:
    s = config["sampler"]
    log_z, rest = [], []
    for name, p in sampler.named_parameters():
        (log_z if name.startswith("policy.log_z_head") else rest).append(p)
    return torch.optim.Adam([{"params": rest, "lr": s["lr"]},
                             {"params": log_z, "lr": s["log_z_lr"]}], betas=tuple(s["betas"]))


def nll_validator(model, proposal, valid_batches, samples: int, seed: int, device):
    """val_nll_nats (and its standard error, bits per pixel) by importance sampling."""
    def validate() -> dict:
        if not valid_batches:
            return {}
        est = importance_sampled_nll(model, proposal, valid_batches, samples, also=(),
                                     seed=seed, device=device)[samples]
        return {"val_nll_nats": est.nll_nats, "val_nll_stderr": est.nll_stderr,
                "val_bits_per_dim": est.bits_per_dim, "val_nll_is_bound": True}
    return validate


def build_gfnem(config: dict, model: DiscreteVAE, valid_batches, device) -> EMLoop:
    train, em, s = config["train"], config["em"], config["sampler"]
    sampler = build_sampler(config).to(device)
    family = ImageFamily(model, sampler, device)
    objective, need_flows = objective_from_config(config, learned_backward=False)
    estep = GFlowNetEStep(
        family, objective, sampler_optimizer(sampler, config), sampler.parameters(),
        samples_per_input=s["samples_per_input"], exploration=exploration_from_config(s),
        grad_clip=s["grad_clip"], need_flows=need_flows, sleep_weight=em["sleep_weight"],
        sleep_period=em["sleep_period"], sleep_count=em["sleep_batch_size"],
        mstep_temperature=em["mstep_temperature"],
        mstep_reuse_samples=em["mstep_reuse_samples"])
    options = em_options_from_config(config)
    model_opt = model_optimizer_from_config(config, model.parameters())
    validate = nll_validator(model, sampler, valid_batches, em["valid_samples"], train["seed"],
                             device)
    return EMLoop(family, estep, model_opt, model.parameters(), options, validate,
                  {"model": model, "sampler": sampler})


def build_baseline(config: dict, model: DiscreteVAE, valid_batches, device):
    """One of `BASELINES`, its options from the `baseline` and `train` sections."""
    train, b, method = config["train"], config["baseline"], config["method"]
    common = dict(lr=train["lr"], betas=tuple(train["betas"]), seed=train["seed"],
                  device=device, grad_clip=_clip(train["grad_clip"]))
    if method == "exact_em":
        return BASELINES[method](model, valid_batches, **common)
    common["encoder_lr"] = b["encoder_lr"]
    encoder = build_encoder(config)
    if method == "vqvae":
        return BASELINES[method](model, encoder, valid_batches, commitment=b["commitment"],
                                 decay=b["ema_decay"], **common)
    if method == "gumbel":
        return BASELINES[method](model, encoder, valid_batches, tau0=b["tau0"],
                                 tau_min=b["tau_min"], anneal_rate=b["anneal_rate"],
                                 samples=b["gumbel_samples"], valid_samples=b["valid_samples"],
                                 **common)
    return BASELINES[method](model, encoder, valid_batches, samples=b["samples"],
                             valid_samples=b["valid_samples"], **common)


def _clip(value: float) -> float:
    """The baselines read 0 as no clipping; a recipe writes .inf."""
    return 0.0 if value == float("inf") else float(value)


def build_method(config: dict, model: DiscreteVAE, valid_batches, device):
    if config["method"] == "gfnem":
        return build_gfnem(config, model, valid_batches, device)
    return build_baseline(config, model, valid_batches, device)


__all__ = ["SELECT_METRIC", "build_vae", "build_sampler", "build_encoder", "build_method",
           "build_gfnem", "build_baseline", "sampler_optimizer", "nll_validator"]
