"""The image family's latent z: a batch of h×w grids of categorical codes (DESIGN.md §7).

`codes` is a LongTensor (B, h, w) with values in {0..K−1}, or −1 for a cell not filled yet
(the partial states of the grid GFlowNet). `order`, when known, records the trajectory that
built each grid: order[b, t] is the raster index of the cell filled at step t (for raster
order simply 0..hw−1), so a sampled grid can be teacher-forced along its own trajectory.

Grids small enough to enumerate (K^(hw) of them, e.g. 81 for 2×2, K = 3) are listed in
lexicographic raster order by `enumerate_grids`, and `grid_index` maps a grid back to its row
there: the exact posteriors of tests and of exact EM are tensors over that index.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

EMPTY = -1
MAX_ENUMERATION = 1 << 20


@dataclass
class CodeGrids:
    codes: torch.Tensor                  # (B, h, w) long, −1 = empty
    num_codes: int                       # K
    order: torch.Tensor | None = None    # (B, hw) cell filled at each step, when known

    def __post_init__(self):
        if self.codes.dim() != 3:
            raise ValueError(f"code grids are (B, h, w), got shape {tuple(self.codes.shape)}")

    # ---------------------------------------------------------------- shape
    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        return self.codes.shape[1], self.codes.shape[2]

    @property
    def cells(self) -> int:
        return self.codes.shape[1] * self.codes.shape[2]

    def flat(self) -> torch.Tensor:
        """(B, hw) in raster order."""
        return self.codes.reshape(self.codes.shape[0], -1)

    # ---------------------------------------------------------------- views
    def filled(self) -> torch.Tensor:
        """(B, h, w) True where a code is set."""
        return self.codes >= 0

    def is_complete(self) -> torch.Tensor:
        """(B,) True where every cell is set."""
        return self.filled().flatten(1).all(1)

    def check(self) -> "CodeGrids":
        """Raise ValueError on codes outside −1..K−1 (a caller's bug, not a user error)."""
        if self.codes.numel() and (int(self.codes.min()) < EMPTY
                                   or int(self.codes.max()) >= self.num_codes):
            raise ValueError(f"codes must lie in -1..{self.num_codes - 1}")
        return self

    def to(self, device) -> "CodeGrids":
        order = None if self.order is None else self.order.to(device)
        return replace(self, codes=self.codes.to(device), order=order)

    def index_rows(self, rows: torch.Tensor) -> "CodeGrids":
        order = None if self.order is None else self.order[rows]
        return replace(self, codes=self.codes[rows], order=order)

    def repeat_interleave(self, n: int) -> "CodeGrids":
        """Each grid n times in a row (N latents per input, contiguous)."""
        order = None if self.order is None else self.order.repeat_interleave(n, 0)
        return replace(self, codes=self.codes.repeat_interleave(n, 0), order=order)

    @staticmethod
    def empty(count: int, grid: tuple[int, int], num_codes: int, device=None) -> "CodeGrids":
        return CodeGrids(torch.full((count, *grid), EMPTY, dtype=torch.long, device=device),
                         num_codes)


def enumerate_grids(grid: tuple[int, int], num_codes: int, device=None) -> CodeGrids:
    """All K^(hw) complete grids, row i = the base-K digits of i in raster order."""
    cells = grid[0] * grid[1]
    count = num_codes ** cells
    if count > MAX_ENUMERATION:
        raise ValueError(f"{num_codes}^{cells} = {count:,} grids is too many to enumerate "
                         f"(limit {MAX_ENUMERATION:,})")
    index = torch.arange(count, device=device)
    powers = num_codes ** torch.arange(cells - 1, -1, -1, device=device)
    digits = (index.unsqueeze(1) // powers) % num_codes
    return CodeGrids(digits.view(count, *grid), num_codes)


def grid_index(grids: CodeGrids) -> torch.Tensor:
    """(B,) the row of each complete grid in `enumerate_grids`."""
    flat = grids.flat()
    powers = grids.num_codes ** torch.arange(flat.shape[1] - 1, -1, -1, device=flat.device)
    return (flat * powers).sum(1)
