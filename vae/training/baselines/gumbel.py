"""Straight-through Gumbel-softmax (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017).

Per cell, y = softmax((log q_c + g)/τ) with g Gumbel noise; the forward pass uses the hard
one-hot argmax (an exact sample of q) and the backward pass the relaxed y (Jang et al. §2.2,
"straight-through"). The decoder reads y through its dictionary (y·E), the prior reads the
one-hot planes, and the loss is the negative single-sample ELBO
    −[log p(x | z) + log p(z) + H[q(· | x)]],  H exact for the factorized q,
whose forward value is unbiased for −ELBO at every τ (the sample is hard). The temperature is
annealed as Jang et al. do, τ = max(τ_min, τ_0·exp(−r·step)), step = finite steps so far.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from vae.training.baselines.common import (BaselineMethod, bernoulli_log_likelihood,
                                           check_encoder, decode_embeddings, factorized_elbo,
                                           make_adam, prior_log_prob_relaxed)
from vae.training.baselines.encoder import entropy, gumbel_noise


class GumbelSoftmaxMethod(BaselineMethod):
    name = "gumbel"

    def __init__(self, vae, encoder, valid_batches, *, lr: float = 2e-4,
                 encoder_lr: float | None = None, betas=(0.9, 0.999), grad_clip: float = 0.0,
                 tau0: float = 1.0, tau_min: float = 0.5, anneal_rate: float = 1e-4,
                 samples: int = 1, valid_samples: int = 1, seed: int = 0, device="cpu"):
        super().__init__(vae, valid_batches, device, seed, grad_clip, valid_samples)
        check_encoder(encoder, vae.num_codes, vae.grid, "Gumbel-softmax")
        if not (tau0 > 0 and tau_min > 0 and anneal_rate >= 0 and samples >= 1):
            raise ValueError("need tau0 > 0, tau_min > 0, anneal_rate >= 0, samples >= 1")
        self.encoder = encoder.to(self.device)
        self.modules["encoder"] = self.encoder
        self.tau0, self.tau_min, self.anneal_rate = tau0, tau_min, anneal_rate
        self.samples = samples
        self.optimizer = make_adam([
            {"params": list(self.vae.parameters()), "lr": lr},
            {"params": list(self.encoder.parameters()), "lr": encoder_lr or lr}], betas)

    def temperature(self, step: int | None = None) -> float:
        step = self.steps if step is None else step
        return max(self.tau_min, self.tau0 * math.exp(-self.anneal_rate * step))

    def relaxed_elbo(self, images: torch.Tensor, tau: float) -> torch.Tensor:
        """(B,) the straight-through ELBO estimate, `samples` draws per image averaged."""
        b, n, k = images.shape[0], self.samples, self.vae.num_codes
        h, w = self.vae.grid
        log_probs = torch.log_softmax(self.encoder(images), -1)          # (B, hw, K)
        rows = log_probs.repeat_interleave(n, 0)
        noise = gumbel_noise(rows.shape, self.generator, rows.device, rows.dtype, n)
        soft = torch.softmax((rows + noise) / tau, -1)
        hard = F.one_hot(soft.argmax(-1), k).to(soft.dtype)
        y = (hard + soft - soft.detach()).view(-1, h, w, k)                # straight-through
        decoder = self.vae.decoder
        logits = decode_embeddings(decoder, y @ decoder.dictionary.weight)
        log_lik = bernoulli_log_likelihood(logits, images.repeat_interleave(n, 0))
        log_prior = prior_log_prob_relaxed(self.vae.prior, y)
        return (log_lik + log_prior).view(b, n).mean(1) + entropy(log_probs)

    def loss(self, images):
        elbo = self.relaxed_elbo(images, self.temperature())
        loss = -elbo.mean()
        return loss, {"nll_nats": loss.detach()}

    def _step_info(self) -> dict[str, float]:
        return {"temperature": self.temperature()}

    def validate_batch(self, images, generator):
        logits = self.encoder(images)
        return -factorized_elbo(self.vae, logits, images, self.valid_samples, generator)
