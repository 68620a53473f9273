"""The grid GFlowNet's estimator: an image trunk computed once per image, then a policy over
the partly filled grid conditioned on it (its logits feed the engine's behaviour `choose`).

- `ImageTrunk`: convolutions (stride 2) from the image to one feature vector per grid cell
  (adaptive average pooling to h×w) and a global feature; run on the B images, not on the
  B·N trajectories, then shared by all N trajectories of an image and all hw steps.
- `GridPolicy`: per cell, trunk feature + embedding of the cell's code (or "empty") + a learned
  position; blocks of a 3×3 convolution and a global-mean mixing (so any-order choices can see
  the whole grid); heads: logits for every (cell, code) pair, a per-state log-flow f_φ(s)
  (SubTB/DB), and the conditional log Z_φ(x) (TB), the latter from the trunk alone since it
  belongs to the initial state.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F



class ImageTrunk(nn.Module):
    def __init__(self, grid: tuple[int, int], channels: int):
        super().__init__()
        self.grid = tuple(grid)
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.summary = nn.Linear(channels, channels)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) -> cell features (B, hw, C), global feature (B, C)."""
        h = self.convs(images.unsqueeze(1).to(self.summary.weight.dtype))
        cells = F.adaptive_avg_pool2d(h, self.grid).flatten(2).transpose(1, 2)
        return cells, torch.relu(self.summary(h.mean((2, 3))))


class MixBlock(nn.Module):
    """A 3×3 convolution over the grid, a global-mean term and a per-cell MLP, all residual.
    The MLP matters: without it a cell's logits are nearly additive in its neighbours' codes,
    and a posterior whose cells interact (any decoder's does) cannot be represented."""

    def __init__(self, grid: tuple[int, int], channels: int):
        super().__init__()
        self.grid = tuple(grid)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.mix = nn.Linear(channels, channels)
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(channels, 2 * channels), nn.ReLU(),
                                 nn.Linear(2 * channels, channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        m, cells, c = h.shape
        spatial = h.transpose(1, 2).reshape(m, c, *self.grid)
        h = h + self.conv(torch.relu(spatial)).flatten(2).transpose(1, 2)
        h = h + self.mix(torch.relu(h).mean(1, keepdim=True))
        return h + self.mlp(h)


class GridPolicy(nn.Module):
    def __init__(self, num_codes: int, grid: tuple[int, int], channels: int, blocks: int = 2):
        super().__init__()
        cells = grid[0] * grid[1]
        self.num_codes = num_codes
        self.code = nn.Embedding(num_codes + 1, channels)       # row 0 = empty
        self.position = nn.Parameter(torch.zeros(cells, channels))
        self.blocks = nn.ModuleList([MixBlock(grid, channels) for _ in range(blocks)])
        self.logits_head = nn.Linear(channels, num_codes)
        self.flow_cell = nn.Linear(channels, 1)
        self.flow_global = nn.Linear(channels, 1)
        self.log_z_head = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(),
                                        nn.Linear(channels, 1))

    def features(self, cells: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """cells (M, hw, C) trunk features of each row's image, codes (M, hw) -> (M, hw, C)."""
        h = cells + self.code(codes + 1) + self.position
        for block in self.blocks:
            h = block(h)
        return torch.relu(h)

    def action_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(M, hw, K) logits of setting each cell to each code (masking is the caller's)."""
        return self.logits_head(h)

    def log_flow(self, h: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """(M,) f_φ(s): a sum of per-cell terms plus a global one."""
        return self.flow_cell(h).squeeze(-1).sum(1) + self.flow_global(summary).squeeze(-1)

    def log_z(self, summary: torch.Tensor) -> torch.Tensor:
        """(B,) conditional log Z_φ(x) from the trunk's global feature."""
        return self.log_z_head(summary).squeeze(-1)


