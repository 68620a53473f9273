"""Test NLL of a discrete VAE by importance sampling with its GFlowNet encoder (DESIGN.md §7).

log p̂(x) = logsumexp_m(log p_θ(x, z_m) + log P_B(τ_m | z_m) − log P_F(τ_m | x)) − log M,
τ_m ~ P_F(· | x): an unbiased estimate of p(x), so E[log p̂(x)] ≤ log p(x) (Jensen) and
−log p̂(x) is a stochastic upper bound on the NLL that tightens as M grows (Burda et al. 2016).
In raster order log P_B = 0 and the proposal is q(z | x) itself; in any order the weight is
over trajectories, which is unbiased for p(x) all the same. The log-weights of every image
are kept (B, M) in float64, so the estimates for M = 1 (the ELBO), 100 and the full M come
from one pass, each from the first M' samples. The NLL is reported per image (nats) and per
pixel (bits), as the mean over images ± its standard error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gfnem_cli.engine import distributed

from gfnem_cli.engine import ImportanceEstimate


@dataclass
class NLLEstimate:
    samples: int                 # M
    nll_nats: float              # mean over images of −log p̂(x)
    nll_stderr: float            # standard error of that mean over images
    bits_per_dim: float          # nll_nats / (H·W·ln 2)
    num_images: int
    nll_is_bound: bool = True    # stochastic upper bound (E −log p̂ ≥ −log p)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "nll_nats": self.nll_nats,
                "nll_stderr": self.nll_stderr, "bits_per_dim": self.bits_per_dim,
                "num_images": self.num_images, "nll_is_bound": self.nll_is_bound}


@torch.no_grad()
def log_weights(model, sampler, images: torch.Tensor, samples: int, chunk: int = 256,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, samples) float64 log p(x, z) + log P_B − log P_F for trajectories drawn from P_F."""
    parts = []
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        traj = sampler.sample(images, n, generator=generator)
        log_joint = model.log_joint_grouped(images, traj.z.codes, n).double()
        parts.append((log_joint + traj.log_pb.double() - traj.log_pf.double())
                     .view(images.shape[0], n))
    return torch.cat(parts, 1)


def log_p_hat(log_w: torch.Tensor) -> torch.Tensor:
    """(B,) log p̂(x) from the first-M' log-weights (B, M'), by the engine's float64 estimate."""
    estimate = ImportanceEstimate(log_w.shape[0], log_w.device)
    estimate.add(log_w)
    return estimate.result()[0]


def summarize(per_image_nll: torch.Tensor, samples: int, pixels: int) -> NLLEstimate:
    nll = per_image_nll.double()
    count = nll.numel()
    stderr = float(nll.std(unbiased=True) / math.sqrt(count)) if count > 1 else float("nan")
    mean = float(nll.mean())
    return NLLEstimate(samples, mean, stderr, mean / (pixels * math.log(2)), count)


def importance_sampled_nll(model, sampler, batches, samples: int = 5000,
                           also: tuple[int, ...] = (1, 100), chunk: int = 256, seed: int = 0,
                           device: torch.device | str = "cpu",
                           progress=None, shard: bool = False) -> dict[int, NLLEstimate]:
    """{M': estimate} for M' in `also` (those ≤ samples) and `samples`, over every image of
    `batches` (ImageBatch); the same draws serve every M'.

    With `shard` (`gfnem evaluate`) batch b draws from a generator seeded with (seed, b), so
    the figure does not depend on how the batches are shared: under torchrun each rank takes
    a contiguous block of batches (`distributed.my_share`) and the per-image figures are
    gathered in order. Without it (validation while training, on rank 0 alone) one generator
    seeded with `seed` serves every batch in turn."""
    batches = list(batches)
    if not batches:
        raise ValueError("no images to evaluate")
    wanted = sorted({m for m in also if m <= samples} | {samples})
    per_image: dict[int, list[torch.Tensor]] = {m: [] for m in wanted}
    pixels = batches[0].images.shape[1] * batches[0].images.shape[2]
    model.eval(), sampler.eval()
    offset, mine = distributed.my_share(batches) if shard else (0, batches)
    generator = torch.Generator(device=device).manual_seed(seed)
    for index, batch in enumerate(mine, start=offset):
        if shard:
            generator = torch.Generator(device=device).manual_seed(distributed.batch_seed(seed, index))
        images = batch.images.to(device)
        log_w = log_weights(model, sampler, images, samples, chunk, generator)
        for m in wanted:
            per_image[m].append(-log_p_hat(log_w[:, :m]).cpu())
        if progress is not None:
            progress(len(batch) * (distributed.world().size if shard else 1))
    gather = distributed.gather_in_order if shard else (lambda parts: parts)
    return {m: summarize(torch.cat(gather(per_image[m])), m, pixels) for m in wanted}

