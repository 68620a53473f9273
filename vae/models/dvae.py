"""The discrete VAE's generative model p_θ(x, z) = p_θ(z) · p_θ(x | z) (DESIGN.md §7).

`log_joint` scores one grid per image row (the caller expands the B images to the B·N rows of
its latents, each input's N contiguous: `log_joint_grouped`). `sample` draws z ~ p(z) and
x ~ p(x | z) for the sleep phase and for PNGs of samples. For grids small enough to enumerate
(2×2, K ≤ 10) `exact_log_posterior` and `exact_log_marginal` sum over every grid: the decoder
runs once per grid (not per image × grid) and log p(x | z) for all pairs is one matmul,
Σ_p x_p ℓ_p(z) − softplus(ℓ_p(z)).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gfnem_cli.engine.row_noise import RowNoise
from vae.code_grids import CodeGrids, enumerate_grids


class DiscreteVAE(nn.Module):
    def __init__(self, decoder: nn.Module, prior: nn.Module):
        super().__init__()
        if decoder.num_codes != prior.num_codes or tuple(decoder.grid) != tuple(prior.grid):
            raise ValueError("decoder and prior disagree on the grid or the number of codes")
        self.decoder, self.prior = decoder, prior

    @property
    def num_codes(self) -> int:
        return self.decoder.num_codes

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.decoder.grid)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.decoder.image_shape)

    # ------------------------------------------------------------------ scoring
    def log_joint(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(M,) log p(x_m, z_m): images (M, H, W), codes (M, h, w), differentiable in θ."""
        return self.prior.log_prob(codes) + self.decoder.log_likelihood(images, codes)

    def log_joint_grouped(self, images: torch.Tensor, codes: torch.Tensor, n: int) -> torch.Tensor:
        """(B·n,) for B images and their n grids each (row b·n + k)."""
        return self.log_joint(images.repeat_interleave(n, 0), codes)

    def decoder_means(self, codes: torch.Tensor) -> torch.Tensor:
        """(M, H, W) Bernoulli means, for pictures of reconstructions and samples."""
        return torch.sigmoid(self.decoder(codes))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None,
               noise: RowNoise | None = None) -> tuple[torch.Tensor, CodeGrids]:
        """(x (count, H, W) uint8, z): z ~ p(z), x ~ p(x | z). With `noise` (train.row_noise)
        sample m's draws are its row's: the prior's cells its draws 0 … hw−1, the pixels the
        next H·W, so a dream is a function of its row alone."""
        device = next(self.decoder.parameters()).device
        codes = self.prior.sample(count, generator, device=device, noise=noise)
        means = self.decoder_means(codes)
        if noise is None:
            u = torch.rand(means.shape, generator=generator, device=device, dtype=means.dtype)
        else:
            cells = codes[0].numel()
            u = noise.uniform(0, cells + means[0].numel())[:, cells:].view(means.shape)
        return (u < means).to(torch.uint8), CodeGrids(codes, self.num_codes)

    # ------------------------------------------------------------------ enumeration
    def exact_log_joint_table(self, images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(B, K^(hw)) log p(x_b, z_g) for every enumerated grid g, float64."""
        grids = enumerate_grids(self.grid, self.num_codes, device=images.device).codes
        x = images.flatten(1).double()
        parts = []
        for start in range(0, grids.shape[0], chunk):   # chunks of grids bound the memory
            codes = grids[start:start + chunk]
            logits = self.decoder(codes).flatten(1).double()          # (G, HW)
            log_lik = x @ logits.t() - F.softplus(logits).sum(1)      # (B, G)
            parts.append(log_lik + self.prior.log_prob(codes).double())
        return torch.cat(parts, 1)

    def exact_log_marginal(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) log p(x) = logsumexp_z log p(x, z)."""
        return torch.logsumexp(self.exact_log_joint_table(images), 1)

    def exact_log_posterior(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K^(hw)) log p(z | x) over `enumerate_grids` order."""
        table = self.exact_log_joint_table(images)
        return table - torch.logsumexp(table, 1, keepdim=True)
