"""Priors p_θ(z) over code grids (DESIGN.md §7): uniform, or learned autoregressive.

- `UniformPrior`: log p(z) = −hw·log K, no parameters (the paper's default).
- `AutoregressivePrior`: a PixelCNN over the grid (van den Oord et al. 2016, "Pixel recurrent
  neural networks"): masked convolutions in raster order, so cell c's logits read only the
  cells before it; log p(z) = Σ_c log softmax(logits_c)[z_c]. The first (type A) layer's
  kernel covers the whole grid, so every earlier cell is visible (no blind spot). Trained in
  the M-step with the decoder.
Both offer `sample(count)` for the sleep phase and for prior samples (with `train.row_noise`,
each row's draws keyed by the row).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gfnem_cli.engine.row_noise import RowNoise, inverse_cdf


class UniformPrior(nn.Module):
    def __init__(self, num_codes: int, grid: tuple[int, int]):
        super().__init__()
        self.num_codes, self.grid = num_codes, tuple(grid)

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        value = -self.grid[0] * self.grid[1] * math.log(self.num_codes)
        return torch.full((codes.shape[0],), value, device=codes.device)

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None,
               device=None, noise: RowNoise | None = None) -> torch.Tensor:
        if noise is not None:      # row m's draws 0 … hw−1, one per cell
            u = noise.uniform(0, self.grid[0] * self.grid[1])
            return (u * self.num_codes).long().clamp(max=self.num_codes - 1).view(
                count, *self.grid)
        return torch.randint(self.num_codes, (count, *self.grid), generator=generator,
                             device=device)


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only earlier cells in raster order (type A), or the cell
    itself too (type B)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, include_centre: bool):
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        mask = torch.zeros(kernel, kernel)
        c = kernel // 2
        mask[:c] = 1
        mask[c, :c + int(include_centre)] = 1
        self.register_buffer("mask", mask.view(1, 1, kernel, kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class AutoregressivePrior(nn.Module):
    def __init__(self, num_codes: int, grid: tuple[int, int], channels: int = 64,
                 layers: int = 3):
        super().__init__()
        self.num_codes, self.grid = num_codes, tuple(grid)
        kernel = 2 * max(grid) - 1
        body: list[nn.Module] = [MaskedConv2d(num_codes, channels, kernel, False), nn.ReLU()]
        for _ in range(layers - 1):
            body += [MaskedConv2d(channels, channels, 3, True), nn.ReLU()]
        body.append(nn.Conv2d(channels, num_codes, 1))
        self.net = nn.Sequential(*body)

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        """(M, h, w, K): the logits of each cell given the cells before it (empty = −1 reads
        as no code, which only cells after the empty one could see)."""
        one_hot = F.one_hot(codes.clamp(min=0), self.num_codes).to(self.net[0].weight.dtype)
        one_hot = one_hot * (codes >= 0).unsqueeze(-1)
        return self.net(one_hot.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(self.logits(codes), dim=-1)
        return log_p.gather(-1, codes.unsqueeze(-1)).flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None,
               device=None, noise: RowNoise | None = None) -> torch.Tensor:
        """With `noise`, cell c of row m is drawn by inverse CDF from the row's draw c."""
        h, w = self.grid
        codes = torch.full((count, h, w), -1, dtype=torch.long, device=device)
        u = None if noise is None else noise.uniform(0, h * w)
        for cell in range(h * w):          # autoregressive: one cell per step, all rows at once
            i, j = divmod(cell, w)
            logits = self.logits(codes)[:, i, j]
            if u is None:
                probs = torch.softmax(logits, dim=-1)
                codes[:, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                codes[:, i, j] = inverse_cdf(torch.log_softmax(logits, dim=-1), u[:, cell])
        return codes


def build_prior(kind: str, num_codes: int, grid: tuple[int, int], **options) -> nn.Module:
    if kind == "uniform":
        return UniformPrior(num_codes, grid)
    if kind == "autoregressive":
        return AutoregressivePrior(num_codes, grid, **options)
    raise ValueError(f"unknown prior {kind!r} (uniform, autoregressive)")
