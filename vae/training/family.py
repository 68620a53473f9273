"""The discrete VAE and its grid GFlowNet as the engine's `SamplerFamily` (DESIGN.md §4, §7).

The EM loop never sees images or grids: it asks this adapter for log p_θ(x, z) of the N grids
of each image (the reward of the E-step, the objective of the M-step), for trajectories from
the sampler with the recipe's exploration, and — for the sleep phase — for dreams
(z̃ ~ p(z), x̃ ~ p(x | z̃)) and log P_F of one trajectory to z̃ given x̃ (Hu et al. 2023, §3).
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import row_noise
from vae.code_grids import CodeGrids
from vae.data.batching import ImageBatch


class _Reward:
    """What the sampler reads as its reward: log p_θ(x, z) rows for (images, codes) rows."""

    def __init__(self, model):
        self.model = model

    def log_joint(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.model.log_joint(images, codes)


class ImageFamily:
    """DiscreteVAE θ + GridSampler φ; batches are `ImageBatch`es; the NLL unit is the image."""

    nll_unit = "image"

    def __init__(self, model, sampler, device: torch.device):
        self.model, self.sampler, self.device = model, sampler, device
        self.reward = _Reward(model)

    def _images(self, batch: ImageBatch) -> torch.Tensor:
        return batch.images.to(self.device, non_blocking=True)

    def batch_size(self, batch: ImageBatch) -> int:
        return len(batch)

    def num_units(self, batch: ImageBatch) -> int:
        """The M-step's NLL is logged per image (the engine's `CountsUnits`)."""
        return len(batch)

    def log_joint(self, batch: ImageBatch, z: CodeGrids, n: int) -> torch.Tensor:
        return self.model.log_joint_grouped(self._images(batch), z.codes, n)

    def sample(self, batch: ImageBatch, n: int, exploration, need_flows: bool):
        return self.sampler.sample(self._images(batch), n, temperature=exploration.temperature,
                                   epsilon=exploration.epsilon, reward=self.reward,
                                   need_flows=need_flows)

    @torch.no_grad()
    def dream(self, count: int) -> tuple[torch.Tensor, CodeGrids]:
        """(x̃, z̃) ~ p_θ, for the sleep phase; with train.row_noise dream i is the step's
        row i (the engine numbers them)."""
        return self.model.sample(count, noise=row_noise.for_rows(count, 1, self.device))

    def log_pf_of(self, x: torch.Tensor, z: CodeGrids) -> torch.Tensor:
        """log P_F of one trajectory to each z̃ (any order: its order drawn from P_B)."""
        return self.sampler.score(x, z).log_pf
