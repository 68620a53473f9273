"""The factorized encoder of the baselines: q_φ(z | x) = Π_cells Cat(z_c; softmax(ℓ_c(x))).

Every cell's distribution reads the whole image (a conv trunk pooled to the grid plus a global
feature) but the cells are independent given x: the conditional independence that VQ-VAE,
Gumbel-softmax and REINFORCE encoders impose and GFlowNet-EM's sequential sampler avoids
(Hu et al. 2023, §5.2). With `outputs = D` instead of K the same network gives VQ-VAE's
continuous per-cell vectors z_e(x) (van den Oord et al. 2017).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gfnem_cli.engine import row_noise


class FactorizedEncoder(nn.Module):
    """images (B, H, W) -> (B, hw, outputs): per-cell logits (outputs = K) or vectors."""

    def __init__(self, outputs: int, grid: tuple[int, int], channels: int = 64):
        super().__init__()
        self.outputs, self.grid = outputs, tuple(grid)
        self.trunk = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.summary = nn.Linear(channels, channels)
        self.head = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(),
                                  nn.Linear(channels, outputs))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.trunk(images.unsqueeze(1).to(self.summary.weight.dtype))
        cells = F.adaptive_avg_pool2d(h, self.grid).flatten(2).transpose(1, 2)   # (B, hw, C)
        glob = self.summary(h.mean((2, 3))).unsqueeze(1)                         # (B, 1, C)
        return self.head(torch.relu(cells + glob))


def gumbel_noise(shape, generator: torch.Generator, device, dtype, rows_per_input: int = 1
                 ) -> torch.Tensor:
    """Standard Gumbel noise −log(−log U), U clamped away from 0 and 1 so it stays finite.
    Row i of `shape` is input i // `rows_per_input`'s (for the training step's row noise)."""
    rows = row_noise.for_rows(shape[0], rows_per_input, device)
    if rows is not None:
        u = rows.uniform(0, math.prod(shape[1:])).view(shape).to(dtype)
    else:
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - torch.finfo(dtype).eps)))


def sample_codes(logits: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """(B·n, hw) exact draws from Π_c Cat(softmax(ℓ_c)) by the Gumbel-max trick, each
    image's n draws contiguous."""
    rows = logits.repeat_interleave(n, 0)
    return (rows.detach() + gumbel_noise(rows.shape, generator, rows.device, rows.dtype, n)
            ).argmax(-1)


def log_q(log_probs: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(M,) log q(z | x) = Σ_c log q_c(z_c): log_probs (M, hw, K), codes (M, hw)."""
    return log_probs.gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(1)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """(B,) H[q(· | x)], exact: a factorized q's entropy is the sum of its cells'."""
    return -(log_probs.exp() * log_probs).sum((1, 2))
