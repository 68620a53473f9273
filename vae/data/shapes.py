"""The embedded default image set: binary images from a known discrete-latent model (DESIGN §7).

The generating model is a small instance of the model family the VAE learns:
- latent z: an h×w grid (default 4×4) of codes in {0..K−1} (default K = 4) with a correlated
  prior, a Markov chain over the cells in raster order (initial distribution π, a fixed K×K
  transition matrix A that prefers to repeat a code or step to the next one);
- each code is a fixed stroke pattern (bar, diagonal, box, ...) on a P×P patch (P = 7), drawn
  into its own cell's patch of the (h·P)×(w·P) = 28×28 image;
- pixel noise: every pixel is Bernoulli with mean 1 − flip on a stroke and flip elsewhere.

Because p(x | z) factorizes over cells given z, the exact marginal
log p(x) = log Σ_z p(z) Π_c p(x_c | z_c) is a forward pass over the chain (the forward
algorithm of hidden Markov models, Rabiner 1989, in log space, batched over images). Its mean
over each split is stored in the manifest as the NLL floor that evaluation reports, like the
synthetic grammar's true NLL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gfnem_cli.engine.errors import GfnemError
from vae.data.disk import check_output_dir, fingerprint, save_image_set

STROKES = ("horizontal", "vertical", "diagonal", "box", "antidiagonal", "plus", "cross",
           "square", "dot", "blank")
DEFAULT_SIZES = {"train": 10000, "valid": 1000, "test": 1000}


def stroke_patterns(num_codes: int, patch: int) -> torch.Tensor:
    """(K, P, P) bool: code k's stroke, the first K of `STROKES`."""
    if not 1 <= num_codes <= len(STROKES):
        raise GfnemError(f"shapes has strokes for 1..{len(STROKES)} codes, not {num_codes}")
    i = torch.arange(patch).view(-1, 1).expand(patch, patch)
    j = torch.arange(patch).view(1, -1).expand(patch, patch)
    c, last = patch // 2, patch - 1
    shapes = {
        "horizontal": i == c, "vertical": j == c, "diagonal": i == j,
        "box": (i == 0) | (i == last) | (j == 0) | (j == last), "antidiagonal": i + j == last,
        "plus": (i == c) | (j == c), "cross": (i == j) | (i + j == last),
        "square": (i > 0) & (i < last) & (j > 0) & (j < last),
        "dot": ((i - c).abs() <= 1) & ((j - c).abs() <= 1), "blank": torch.zeros_like(i).bool(),
    }
    return torch.stack([shapes[name] for name in STROKES[:num_codes]])


def chain_matrices(num_codes: int, stay: float, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(π, A): uniform start; A[i, i] = stay, A[i, i+1 mod K] = step, the rest shared evenly."""
    k = num_codes
    if k == 1:
        return torch.ones(1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    if not (0 < stay <= 1 and step >= 0 and stay + step <= 1):
        raise GfnemError(f"chain needs 0 < stay <= 1, step >= 0, stay + step <= 1 "
                         f"(got {stay}, {step})")
    if k == 2:   # one other code: it takes everything the code does not keep
        a = torch.tensor([[stay, 1 - stay], [1 - stay, stay]], dtype=torch.float64)
        return torch.full((k,), 0.5, dtype=torch.float64), a
    a = torch.full((k, k), (1.0 - stay - step) / (k - 2), dtype=torch.float64)
    idx = torch.arange(k)
    a[idx, (idx + 1) % k] = step
    a[idx, idx] = stay
    return torch.full((k,), 1.0 / k, dtype=torch.float64), a


@dataclass
class ShapesModel:
    """The generating model; everything needed to rebuild it is in `options()`."""

    grid: tuple[int, int] = (4, 4)
    num_codes: int = 4
    patch: int = 7
    flip: float = 0.05
    stay: float = 0.5
    step: float = 0.3

    def __post_init__(self):
        if not 0.0 < self.flip < 0.5:
            raise GfnemError(f"pixel noise flip must lie in (0, 0.5), got {self.flip}")
        if min(self.grid) < 1 or self.patch < 1:
            raise GfnemError(f"grid {self.grid} and patch {self.patch} must be positive")
        self.strokes = stroke_patterns(self.num_codes, self.patch)
        self.initial, self.transition = chain_matrices(self.num_codes, self.stay, self.step)

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.grid[0] * self.patch, self.grid[1] * self.patch

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    def options(self) -> dict:
        return {"grid": list(self.grid), "num_codes": self.num_codes, "patch": self.patch,
                "flip": self.flip, "stay": self.stay, "step": self.step}

    @staticmethod
    def from_options(options: dict) -> "ShapesModel":
        return ShapesModel(tuple(options["grid"]), options["num_codes"], options["patch"],
                           options["flip"], options["stay"], options["step"])

    # ------------------------------------------------------------------ sampling
    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n, H, W) uint8, codes (n, h, w) long): z from the chain, then pixels."""
        codes = torch.empty(count, self.cells, dtype=torch.long)
        if count:
            codes[:, 0] = torch.multinomial(self.initial.expand(count, -1), 1, True,
                                            generator=generator).squeeze(1)
            for cell in range(1, self.cells):     # a Markov chain is sequential in its cells
                codes[:, cell] = torch.multinomial(self.transition[codes[:, cell - 1]], 1,
                                                   generator=generator).squeeze(1)
        means = self.pixel_means(codes.view(count, *self.grid))
        images = (torch.rand(means.shape, generator=generator, dtype=torch.float64) < means)
        return images.to(torch.uint8), codes.view(count, *self.grid)

    def pixel_means(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, h, w) codes -> (n, H, W) Bernoulli means."""
        h, w = self.grid
        p = self.patch
        on = self.strokes[codes]                                  # (n, h, w, P, P)
        on = on.permute(0, 1, 3, 2, 4).reshape(codes.shape[0], h * p, w * p)
        return torch.where(on, 1.0 - self.flip, self.flip).to(torch.float64)

    # ------------------------------------------------------------------ exact likelihood
    def cell_log_likelihoods(self, images: torch.Tensor) -> torch.Tensor:
        """(n, C, K) float64: log p(x_c | z_c = k) for every cell c and code k, one matmul."""
        n = images.shape[0]
        h, w = self.grid
        p = self.patch
        x = images.to(torch.float64).view(n, h, p, w, p).permute(0, 1, 3, 2, 4)
        x = x.reshape(n, h * w, p * p)
        mu = torch.where(self.strokes.view(self.num_codes, -1), 1.0 - self.flip,
                         self.flip).to(torch.float64)
        log_on, log_off = mu.log(), (1.0 - mu).log()
        return x @ (log_on - log_off).t() + log_off.sum(1)

    def log_marginal(self, images: torch.Tensor) -> torch.Tensor:
        """(n,) exact log p(x): the forward algorithm over the raster-order chain."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images are {tuple(images.shape[1:])}, the model draws "
                             f"{self.image_shape}")
        emit = self.cell_log_likelihoods(images)
        log_a = self.transition.log()
        alpha = self.initial.log() + emit[:, 0]
        for cell in range(1, self.cells):
            alpha = torch.logsumexp(alpha.unsqueeze(2) + log_a, dim=1) + emit[:, cell]
        return torch.logsumexp(alpha, dim=1)

    def log_joint(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(n,) log p(x, z) for one grid per image (tests and diagnostics)."""
        flat = codes.reshape(codes.shape[0], -1)
        emit = self.cell_log_likelihoods(images).gather(2, flat.unsqueeze(2)).squeeze(2).sum(1)
        prior = self.initial.log()[flat[:, 0]]
        prior = prior + self.transition.log()[flat[:, :-1], flat[:, 1:]].sum(1)
        return prior + emit


def prepare_shapes(out: Path, sizes: dict[str, int] | None = None, seed: int = 0,
                   model: ShapesModel | None = None) -> dict:
    """Draw every split with its own seed (seed·1000 + split number, so changing one split's
    size leaves the others alone), compute the exact NLL, save; returns the manifest."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    model = model or ShapesModel()
    bad = {name: n for name, n in sizes.items() if not isinstance(n, int) or n < 0}
    if bad or not sizes or sum(sizes.values()) == 0:
        raise GfnemError(f"split sizes must be non-negative integers, not all 0 (got {sizes})")
    check_output_dir(Path(out))
    splits, true_nll, stderr = {}, {}, {}
    for number, (name, count) in enumerate(sizes.items()):
        generator = torch.Generator().manual_seed(seed * 1000 + number)
        images, codes = model.sample(count, generator)
        splits[name] = {"images": images.numpy(), "labels": np.full(count, -1, np.int16),
                        "codes": codes.numpy()}
        if count:
            nll = -model.log_marginal(images)
            true_nll[name] = float(nll.mean())
            stderr[name] = float(nll.std() / math.sqrt(count)) if count > 1 else 0.0
    manifest = {
        "kind": "shapes", "protocol": "known-model",
        "options": {"sizes": sizes, "seed": seed, **model.options()},
        "model": model.options(), "image_shape": list(model.image_shape),
        "splits": {name: {"images": n} for name, n in sizes.items()},
        "true_nll": true_nll, "true_nll_stderr": stderr, "nll_unit": "nats per image",
        "notes": ["true_nll is the exact mean -log p(x) under the generating model (forward "
                  "algorithm over the prior's chain): the floor no model can beat in expectation"],
        "fingerprint": fingerprint(splits),
    }
    save_image_set(splits, manifest, Path(out))
    return manifest
