"""A batch of partly filled code grids: the state of the grid GFlowNet (DESIGN.md §7).

A state is a grid whose cells are either set to a code in {0..K−1} or empty (−1), kept flat in
raster order, (M, hw). The initial state is all empty; a forward action sets one empty cell;
the state is terminal when every cell is set, so every trajectory has exactly hw steps.
Actions are numbered a = cell·K + code, so "any order" is one softmax over the (cell, code)
pairs of the empty cells; in raster order the cell of step t is t and the action is the code.
All methods are functional and act on every row at once (no Python loop over rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vae.code_grids import EMPTY, CodeGrids


@dataclass
class GridState:
    codes: torch.Tensor          # (M, hw) long, −1 = empty
    grid: tuple[int, int]
    num_codes: int

    @staticmethod
    def initial(count: int, grid: tuple[int, int], num_codes: int, device=None) -> "GridState":
        cells = grid[0] * grid[1]
        return GridState(torch.full((count, cells), EMPTY, dtype=torch.long, device=device),
                         tuple(grid), num_codes)

    @property
    def cells(self) -> int:
        return self.codes.shape[1]

    def filled(self) -> torch.Tensor:
        """(M, hw) True where a cell is set."""
        return self.codes >= 0

    def num_filled(self) -> torch.Tensor:
        return self.filled().sum(1)

    def action_mask(self) -> torch.Tensor:
        """(M, hw·K) True at the (cell, code) actions that are legal: any code of an empty cell."""
        return (~self.filled()).repeat_interleave(self.num_codes, dim=1)

    def fill(self, cell: torch.Tensor, code: torch.Tensor) -> "GridState":
        """Set codes[m, cell[m]] = code[m] in every row (the caller keeps cells empty)."""
        codes = self.codes.scatter(1, cell.view(-1, 1), code.view(-1, 1))
        return GridState(codes, self.grid, self.num_codes)

    def is_empty_at(self, cell: torch.Tensor) -> torch.Tensor:
        """(M,) True where cell[m] is empty (teacher forcing checks its given order with it)."""
        return self.codes.gather(1, cell.view(-1, 1)).squeeze(1) < 0

    def as_grids(self, order: torch.Tensor | None = None) -> CodeGrids:
        return CodeGrids(self.codes.view(-1, *self.grid), self.num_codes, order)
