"""Exact EM for grids small enough to enumerate: maximise log p_θ(x) = logsumexp_z log p_θ(x, z).

The sum over all K^(hw) grids (`DiscreteVAE.exact_log_marginal`: the decoder runs once per
grid, log p(x | z) for every image-grid pair is one matmul) is differentiated directly; its
gradient is E_{p_θ(z | x)}[∇_θ log p_θ(x, z)], the exact E-step's expectation (Dempster, Laird
& Rubin 1977; the grammars' exact-marginal baseline, Kim et al. 2019, is the same idea). The
validation figure is the exact NLL, not a bound. Grids beyond `max_grids` are refused: the
cost of a step is K^(hw) decoder passes.
"""
from __future__ import annotations

from gfnem_cli.engine.errors import GfnemError
from vae.training.baselines.common import BaselineMethod, make_adam

MAX_GRIDS = 4096


class ExactEMMethod(BaselineMethod):
    name = "exact_em"
    nll_is_bound = False

    def __init__(self, vae, valid_batches, *, lr: float = 2e-4, betas=(0.9, 0.999),
                 grad_clip: float = 0.0, max_grids: int = MAX_GRIDS, seed: int = 0,
                 device="cpu"):
        h, w = vae.grid
        count = vae.num_codes ** (h * w)
        if count > max_grids:
            raise GfnemError(f"exact EM sums over every code grid: K^(hw) = "
                             f"{vae.num_codes}^{h * w} = {count:,} is more than max_grids = "
                             f"{max_grids:,}",
                             hint="use a smaller grid (2x2) or K, raise max_grids if the "
                                  "compute allows, or train a GFlowNet-EM or baseline recipe")
        super().__init__(vae, valid_batches, device, seed, grad_clip)
        self.optimizer = make_adam([{"params": list(self.vae.parameters()), "lr": lr}], betas)

    def loss(self, images):
        log_px = self.vae.exact_log_marginal(images)       # float64, differentiable in θ
        loss = -log_px.mean()
        return loss, {"nll_nats": loss.detach()}

    def validate_batch(self, images, generator):
        return -self.vae.exact_log_marginal(images)
