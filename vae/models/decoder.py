"""The Bernoulli decoder p_θ(x | z) of the discrete VAE (Hu et al. 2023, §5.2 / appendix).

A code grid z (h×w codes in {0..K−1}) is looked up in a learned dictionary of D-dimensional
embeddings (the paper: D = 1), then a 1×1 convolution, two residual blocks (ReLU, 3×3 conv,
ReLU, 1×1 conv, plus the input, as in VQ-VAE, van den Oord et al. 2017) and transposed
convolutions that double the resolution, 4→7→14→28 for the paper's 4×4 grid and 28×28
images (128 channels), give one Bernoulli logit per pixel.
log p(x | z) = Σ_pixels x·ℓ − softplus(ℓ), computed from logits for stability.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h)


def upsampling_sizes(grid: int, image: int) -> list[int]:
    """Sizes from the grid up to the image, each step ×2 or ×2−1 (28 → 14 → 7 → 4 → 2 → 1)."""
    sizes = [image]
    while sizes[-1] > grid:
        sizes.append(-(-sizes[-1] // 2))
    if sizes[-1] != grid:
        raise ValueError(f"a {grid}-cell side cannot be upsampled to {image} pixels by "
                         f"doubling (reachable sides: {sizes})")
    return sizes[::-1]


class Decoder(nn.Module):
    def __init__(self, num_codes: int, grid: tuple[int, int] = (4, 4),
                 image_shape: tuple[int, int] = (28, 28), embedding_dim: int = 1,
                 channels: int = 128, residual_blocks: int = 2):
        super().__init__()
        self.num_codes, self.grid, self.image_shape = num_codes, tuple(grid), tuple(image_shape)
        rows = upsampling_sizes(grid[0], image_shape[0])
        cols = upsampling_sizes(grid[1], image_shape[1])
        if len(rows) != len(cols):
            raise ValueError(f"grid {grid} and image {image_shape} need different numbers of "
                             "upsampling steps per side")
        self.dictionary = nn.Embedding(num_codes, embedding_dim)
        self.stem = nn.Conv2d(embedding_dim, channels, 1)
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(residual_blocks)])
        layers: list[nn.Module] = [nn.ReLU()]
        steps = list(zip(zip(rows[:-1], rows[1:]), zip(cols[:-1], cols[1:])))
        for number, ((r0, r1), (c0, c1)) in enumerate(steps):
            out = 1 if number == len(steps) - 1 else channels
            kernel = (4 if r1 == 2 * r0 else 3, 4 if c1 == 2 * c0 else 3)
            layers.append(nn.ConvTranspose2d(channels, out, kernel, stride=2, padding=1))
            if out != 1:
                layers.append(nn.ReLU())
        if not steps:
            layers.append(nn.Conv2d(channels, 1, 1))
        self.upsample = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(M, h, w) codes -> (M, H, W) pixel logits."""
        h = self.dictionary(codes).permute(0, 3, 1, 2)        # (M, D, h, w)
        return self.upsample(self.blocks(self.stem(h))).squeeze(1)

    def log_likelihood(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(M,) log p(x_m | z_m) for one image per grid."""
        logits = self(codes)
        x = images.to(logits.dtype)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
