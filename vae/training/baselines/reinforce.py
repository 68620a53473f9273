"""REINFORCE with a leave-one-out baseline (Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE
samples, get a baseline for free!").

N ≥ 2 codes z_1..z_N ~ q_φ(· | x) per image; learning signal f_n = log p_θ(x, z_n) −
log q_φ(z_n | x). The ELBO gradient is estimated as
    ∇_θ: (1/N) Σ_n ∇_θ log p_θ(x, z_n)                         (pathwise),
    ∇_φ: (1/N) Σ_n (f_n − b_n) ∇_φ log q_φ(z_n | x),  b_n = (1/(N−1)) Σ_{m≠n} f_m,
unbiased because b_n does not depend on z_n (the E_q[∇_φ(−log q)] = 0 term is dropped).
The surrogate's value is the sample −ELBO, so the reported loss is the figure that decreases.
"""
from __future__ import annotations

import torch

from gfnem_cli.engine.errors import GfnemError
from vae.training.baselines.common import (BaselineMethod, check_encoder, factorized_elbo,
                                           make_adam)
from vae.training.baselines.encoder import log_q, sample_codes


class ReinforceLOOMethod(BaselineMethod):
    name = "reinforce"

    def __init__(self, vae, encoder, valid_batches, *, samples: int = 4, lr: float = 2e-4,
                 encoder_lr: float | None = None, betas=(0.9, 0.999), grad_clip: float = 0.0,
                 valid_samples: int = 1, seed: int = 0, device="cpu"):
        super().__init__(vae, valid_batches, device, seed, grad_clip, valid_samples)
        check_encoder(encoder, vae.num_codes, vae.grid, "REINFORCE")
        if samples < 2:
            raise GfnemError(f"REINFORCE's leave-one-out baseline needs samples >= 2 per image, "
                             f"got {samples}", hint="set samples to 2 or more (Kool et al.: 4)")
        self.encoder = encoder.to(self.device)
        self.modules["encoder"] = self.encoder
        self.samples = samples
        self.optimizer = make_adam([
            {"params": list(self.vae.parameters()), "lr": lr},
            {"params": list(self.encoder.parameters()), "lr": encoder_lr or lr}], betas)

    def loss(self, images):
        b, n = images.shape[0], self.samples
        log_probs = torch.log_softmax(self.encoder(images), -1)          # (B, hw, K)
        codes = sample_codes(log_probs, n, self.generator)                # (B·n, hw)
        lq = log_q(log_probs.repeat_interleave(n, 0), codes).view(b, n)
        joint = self.vae.log_joint_grouped(images, codes.view(-1, *self.vae.grid), n).view(b, n)
        signal = (joint - lq).detach()
        baseline = (signal.sum(1, keepdim=True) - signal) / (n - 1)
        advantage = signal - baseline
        # value: the sample ELBO; gradient: pathwise in θ, score function with LOO in φ
        surrogate = joint - lq.detach() + advantage * (lq - lq.detach())
        loss = -surrogate.mean()
        return loss, {"nll_nats": -signal.mean()}

    def validate_batch(self, images, generator):
        logits = self.encoder(images)
        return -factorized_elbo(self.vae, logits, images, self.valid_samples, generator)
