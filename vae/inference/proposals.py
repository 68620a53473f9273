"""Posterior proposals q(z | x) of a trained run, all with the grid sampler's `sample` shape.

`sample(images, n, generator=...)` returns an object with `z` (CodeGrids, B·n rows, each
image's n contiguous), `log_pf` and `log_pb` (B·n,), which is what
`vae.evaluation.likelihood.importance_sampled_nll` reads: the GridSampler itself for
GFlowNet-EM, and for the baselines an adapter with log_pb = 0 (one trajectory per grid):
- `FactorizedProposal`: Gumbel-softmax and REINFORCE's encoder, Π_cells Cat(softmax ℓ_c(x)).
- `NearestCodeProposal`: VQ-VAE's deterministic z*(x) (log q = 0): −log p̂ is then
  −log p(x, z*), the bound DESIGN.md §7 names.
- `ExactPosterior`: exact EM's p_θ(z | x) by enumeration; the IS estimate is exact for any M.
`exact` / `deterministic` tell the evaluation how to label its figure.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vae.code_grids import CodeGrids, enumerate_grids
from vae.training.baselines.encoder import log_q, sample_codes
from vae.training.baselines.vqvae import nearest_codes


@dataclass
class Draws:
    z: CodeGrids
    log_pf: torch.Tensor       # log q(z | x) of each draw
    log_pb: torch.Tensor


class _Proposal:
    exact = False
    deterministic = False

    def __init__(self, model, grid, num_codes):
        self.model, self.grid, self.num_codes = model, tuple(grid), num_codes

    def eval(self):
        return self

    def _draws(self, codes: torch.Tensor, lq: torch.Tensor) -> Draws:
        return Draws(CodeGrids(codes.view(-1, *self.grid), self.num_codes), lq,
                     torch.zeros_like(lq))


class FactorizedProposal(_Proposal):
    def __init__(self, model, encoder):
        super().__init__(model, model.grid, model.num_codes)
        self.encoder = encoder

    @torch.no_grad()
    def sample(self, images, n: int = 1, generator=None, **_) -> Draws:
        log_probs = torch.log_softmax(self.encoder(images), -1)        # (B, hw, K)
        codes = sample_codes(log_probs, n, generator)
        return self._draws(codes, log_q(log_probs.repeat_interleave(n, 0), codes))


class NearestCodeProposal(_Proposal):
    deterministic = True

    def __init__(self, model, encoder):
        super().__init__(model, model.grid, model.num_codes)
        self.encoder = encoder

    @torch.no_grad()
    def sample(self, images, n: int = 1, generator=None, **_) -> Draws:
        codes = nearest_codes(self.encoder(images), self.model.decoder.dictionary.weight)
        codes = codes.repeat_interleave(n, 0)
        return self._draws(codes, torch.zeros(codes.shape[0], device=images.device))


class ExactPosterior(_Proposal):
    exact = True

    def __init__(self, model):
        super().__init__(model, model.grid, model.num_codes)

    @torch.no_grad()
    def sample(self, images, n: int = 1, generator=None, **_) -> Draws:
        log_post = self.model.exact_log_posterior(images)              # (B, G) float64
        rows = torch.multinomial(log_post.exp().float(), n, replacement=True,
                                 generator=generator)                  # (B, n)
        grids = enumerate_grids(self.grid, self.num_codes, images.device).codes
        codes = grids[rows.reshape(-1)]
        return self._draws(codes, log_post.gather(1, rows).reshape(-1).float())


def proposal_of(run):
    """The proposal of a `TrainedImageRun` (vae.run.load_run)."""
    if run.sampler is not None:
        return run.sampler
    if run.method == "exact_em":
        return ExactPosterior(run.model)
    if run.method == "vqvae":
        return NearestCodeProposal(run.model, run.encoder)
    return FactorizedProposal(run.model, run.encoder)
