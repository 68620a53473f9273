"""`train.row_noise`: a training step's random draws as a function of (seed, step, call, row).

A stateful generator hands out numbers in the order they are asked for, so how a batch is
split decides which row gets which number: under `torchrun` every rank draws its own, and a
sampler whose rollout length is its shard's longest input consumes a different amount of the
stream than one process would. With `train.row_noise: true` a sampler instead asks for the
noise of its rows by name: uniform u(seed, step, call, global row, draw) from a counter-based
hash (SplitMix64's finalizer, Steele et al. 2014), where `call` counts the sampling calls of the
step (the same on every rank, since every rank takes the same branches), `global row` is the
row's index in the whole batch (an input's index times its rows per input, plus the row), and
`draw` the sampler's own counter (a rollout step, a cell). Whatever the world size, the resume
point or the padding, a row sees the same numbers, so two ranks train what one process would
(within float rounding). Nothing to checkpoint: the step number is the state.

Off by default (the samplers then draw from torch's generators as they always did, and every
published run reproduces); outside a training step (validation, parse, sample) it is inactive.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A 64-bit pattern as torch's int64 holds it."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical shift of int64 bit patterns (torch's `>>` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer on int64 bit patterns (wrapping multiplication)."""
    x = x ^ _shift_right(x, 30)
    x = x * _signed(_MIX1)
    x = x ^ _shift_right(x, 27)
    x = x * _signed(_MIX2)
    return x ^ _shift_right(x, 31)


def mix_int(value: int) -> int:
    """The same finalizer on a Python int (the reference the tests compare `mix` with)."""
    value &= _MASK64
    value = ((value ^ (value >> 30)) * _MIX1) & _MASK64
    value = ((value ^ (value >> 27)) * _MIX2) & _MASK64
    return value ^ (value >> 31)


def _key(*parts: int) -> int:
    """One 64-bit key from a few integers (each folded in through the finalizer)."""
    key = 0
    for part in parts:
        key = mix_int(key ^ ((part * _GOLDEN) & _MASK64))
    return key


@dataclass(frozen=True)
class RowNoise:
    """The noise of one sampling call's rows: local row m is global row `first_row + m`."""
    key: int
    first_row: int
    num_rows: int
    device: torch.device

    def uniform(self, draw: int, width: int | None = None) -> torch.Tensor:
        """Float64 uniforms in [0, 1): (rows,) for draw `draw`, or (rows, width) for the
        draws draw·W ... draw·W + W−1 of each row (W = `width`)."""
        rows = torch.arange(self.first_row, self.first_row + self.num_rows,
                            device=self.device, dtype=torch.int64)
        cols = 1 if width is None else width
        counters = (draw * cols + torch.arange(cols, device=self.device, dtype=torch.int64))
        x = mix(rows.unsqueeze(1) * _signed(_GOLDEN) ^ _signed(self.key))
        x = mix(x ^ (counters.unsqueeze(0) * _signed(_MIX2)))
        u = _shift_right(x, 11).to(torch.float64) * (2.0 ** -53)
        return u.squeeze(1) if width is None else u

    def normal(self, draw: int, width: int) -> torch.Tensor:
        """(rows, width) float64 standard normals (Box–Muller on draws 2·draw and 2·draw+1)."""
        u1, u2 = self.uniform(2 * draw, width), self.uniform(2 * draw + 1, width)
        return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)

    def child(self, tag: int) -> "RowNoise":
        """Independent noise for a part of the call (a local-search round, its walk back)."""
        return RowNoise(_key(self.key, tag), self.first_row, self.num_rows, self.device)

    def shared_uniform(self, draw: int) -> float:
        """One uniform every row (and every rank) shares: a round's k, say."""
        return (_key(self.key, -1, draw) >> 11) * (2.0 ** -53)


class _Step:
    enabled: bool = False
    seed: int = 0
    step: int | None = None        # inside a training step, its number
    calls: int = 0
    first_input: int = 0           # this rank's first row of the global batch


_state = _Step()


def configure(enabled: bool, seed: int) -> None:
    """From the recipe (`train.row_noise`, `train.seed`), once per run."""
    _state.enabled, _state.seed = bool(enabled), int(seed)


def enabled() -> bool:
    return _state.enabled


@contextmanager
def training_step(step: int, first_input: int = 0):
    """The trainer's frame around one step; `first_input`: this rank's first global row."""
    _state.step, _state.calls, _state.first_input = int(step), 0, int(first_input)
    try:
        yield
    finally:
        _state.step = None


@contextmanager
def numbered_from(first_input: int):
    """Inside the block the rows count from `first_input`, whatever this rank's shard: for
    rows every rank draws alike (the sleep phase's dreams with a fixed em.sleep_batch_size)."""
    saved = _state.first_input
    _state.first_input = int(first_input)
    try:
        yield
    finally:
        _state.first_input = saved


def for_rows(num_rows: int, rows_per_input: int, device: torch.device | str
             ) -> RowNoise | None:
    """The noise of a sampling call over `num_rows` rows, each input's `rows_per_input` rows
    contiguous, or None when row noise is off or no training step is running (the caller then
    uses its generator). Inside a training step it replaces every generator a caller holds."""
    if not _state.enabled or _state.step is None:
        return None
    _state.calls += 1
    return RowNoise(_key(_state.seed, _state.step, _state.calls),
                    _state.first_input * int(rows_per_input), int(num_rows),
                    torch.device(device))


def draw(noise: RowNoise | None, index: int, width: int | None = None
         ) -> torch.Tensor | None:
    """`noise.uniform(index, width)`, or None without row noise (the caller's generator)."""
    return None if noise is None else noise.uniform(index, width)


def inverse_cdf(log_weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The action of each row whose cumulative weight interval holds u·total (u from
    `RowNoise.uniform`). Weights are exp(log w − row max): columns of weight exactly 0 (illegal,
    or padding a wider batch adds) are never chosen and change no other column's interval, so a
    row picks the same action however wide its batch is padded."""
    with torch.no_grad():
        w = (log_weights.double() - log_weights.double().amax(-1, keepdim=True)).exp()
        cdf = w.cumsum(-1)
        target = (u.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
        action = (cdf <= target).sum(-1).clamp(max=w.shape[-1] - 1)
        last_positive = w.shape[-1] - 1 - (w.flip(-1) > 0).to(torch.int8).argmax(-1)
        return torch.minimum(action, last_positive)
