"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017) on the shared decoder.

The encoder gives a D-vector z_e per cell; z* = the nearest entry of the decoder's dictionary
(the dictionary *is* the codebook: with the paper's D = 1, K scalars); the decoder reads
z_e + sg(e_{z*} − z_e), the straight-through estimator (§3.2). Loss per image:
    −log p(x | z*) + β·Σ_cells ‖z_e − sg(e_{z*})‖² − log p(z*),   β = 0.25,
the last term training a learned prior on the codes (a constant for the uniform one). The
codebook is not in the optimizer: it follows exponential moving averages (appendix A.1), decay
γ = 0.999, of each code's count N_k and of the sum m_k of the vectors assigned to it,
zero-debiased by 1 − γ^t and with Laplace-smoothed counts (as Sonnet's VectorQuantizerEMA):
    Ñ_k = (N_k + ε) / (Σ_j N_j + K·ε) · Σ_j N_j,   e_k = m_k / Ñ_k.
Reported figure: −log p(x, z*) = −log p(x | z*) + hw·log K under the uniform prior, an upper
bound on −log p(x) for the deterministic code z* (DESIGN.md §7).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gfnem_cli.engine import distributed
from vae.training.baselines.common import (BaselineMethod, bernoulli_log_likelihood,
                                           check_encoder, decode_embeddings, make_adam)


class EMACodebook(nn.Module):
    """The moving averages behind the codebook (buffers, so they are saved and resumed)."""

    def __init__(self, num_codes: int, dim: int, decay: float = 0.999, epsilon: float = 1e-5):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.num_codes, self.decay, self.epsilon = num_codes, decay, epsilon
        self.register_buffer("counts", torch.zeros(num_codes))
        self.register_buffer("sums", torch.zeros(num_codes, dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Fold in a batch (vectors (n, D), their codes (n,)); return the codebook (K, D)."""
        one_hot = F.one_hot(codes, self.num_codes).to(self.sums.dtype)
        # under data parallelism the batch's counts and sums are every rank's rows together
        counts = distributed.sum_over_ranks(one_hot.sum(0))
        sums = distributed.sum_over_ranks(one_hot.t() @ vectors.to(self.sums.dtype))
        self.counts.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.sums.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        self.updates += 1
        debias = (1.0 - self.decay ** self.updates).to(self.sums.dtype)
        counts, sums = self.counts / debias, self.sums / debias
        total = counts.sum()
        smoothed = (counts + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        return sums / smoothed.unsqueeze(1)


def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(..., D) vectors -> (...) index of the nearest codebook row (squared Euclidean)."""
    distance = ((vectors.unsqueeze(-2) - codebook) ** 2).sum(-1)          # (..., K)
    return distance.argmin(-1)


class VQVAEMethod(BaselineMethod):
    name = "vqvae"

    def __init__(self, vae, encoder, valid_batches, *, lr: float = 2e-4,
                 encoder_lr: float | None = None, betas=(0.9, 0.999), grad_clip: float = 0.0,
                 commitment: float = 0.25, decay: float = 0.999, epsilon: float = 1e-5,
                 seed: int = 0, device="cpu"):
        super().__init__(vae, valid_batches, device, seed, grad_clip)
        dictionary = self.vae.decoder.dictionary
        check_encoder(encoder, dictionary.embedding_dim, vae.grid, "VQ-VAE")
        self.encoder = encoder.to(self.device)
        self.codebook = EMACodebook(vae.num_codes, dictionary.embedding_dim, decay,
                                    epsilon).to(self.device)
        self.modules.update(encoder=self.encoder, codebook=self.codebook)
        self.commitment = commitment
        model = [p for p in self.vae.parameters() if p is not dictionary.weight]
        self.optimizer = make_adam([{"params": model, "lr": lr},
                                    {"params": list(self.encoder.parameters()),
                                     "lr": encoder_lr or lr}], betas)
        self._pending = None

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_e (B, hw, D), z* (B, hw)) under the current codebook."""
        z_e = self.encoder(images)
        return z_e, nearest_codes(z_e.detach(), self.vae.decoder.dictionary.weight.detach())

    def loss(self, images):
        b = images.shape[0]
        h, w = self.vae.grid
        z_e, codes = self.encode(images)
        z_q = self.vae.decoder.dictionary.weight.detach()[codes]             # (B, hw, D)
        z_st = z_e + (z_q - z_e).detach()                                    # straight-through
        logits = decode_embeddings(self.vae.decoder, z_st.view(b, h, w, -1))
        log_lik = bernoulli_log_likelihood(logits, images)
        commit = ((z_e - z_q) ** 2).sum((1, 2))
        log_prior = self.vae.prior.log_prob(codes.view(b, h, w))
        loss = (-log_lik + self.commitment * commit - log_prior).mean()
        self._pending = (z_e.detach(), codes)
        return loss, {"nll_nats": -(log_lik + log_prior).detach().mean(),
                      "commitment": commit.detach().mean()}

    @torch.no_grad()
    def _after_step(self, images: torch.Tensor) -> None:
        z_e, codes = self._pending
        self._pending = None
        weight = self.vae.decoder.dictionary.weight
        weight.copy_(self.codebook.update(z_e.reshape(-1, weight.shape[1]), codes.reshape(-1)))

    def validate_batch(self, images, generator):
        _, codes = self.encode(images)
        return -self.vae.log_joint(images, codes.view(-1, *self.vae.grid))
