"""A trained image run applied to images: prior samples, reconstructions, code grids, NLL.

Everything is batched over images and draws (B·n rows at once); the only loops are over
batches of images, so memory stays bounded at any data set size.
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import distributed
from vae.data.batching import in_order_batches
from vae.evaluation.likelihood import importance_sampled_nll
from vae.inference.proposals import proposal_of


@torch.no_grad()
def prior_means(run, count: int, seed: int = 0) -> torch.Tensor:
    """(count, H, W) decoder means of z ~ p(z): what the model draws, without pixel noise."""
    generator = torch.Generator(device=run.device).manual_seed(seed)
    codes = run.model.prior.sample(count, generator, device=run.device)
    return run.model.decoder_means(codes)


@torch.no_grad()
def reconstructions(run, images: torch.Tensor, per_image: int, seed: int = 0) -> torch.Tensor:
    """(B, per_image, H, W) decoder means of z ~ q(z | x) for each image."""
    generator = torch.Generator(device=run.device).manual_seed(seed)
    images = images.to(run.device)
    draws = proposal_of(run).sample(images, per_image, generator=generator)
    means = run.model.decoder_means(draws.z.codes)
    return means.view(images.shape[0], per_image, *means.shape[1:])


@torch.no_grad()
def best_codes(run, images: torch.Tensor, samples: int, batch_size: int = 64, seed: int = 0,
               progress=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each image the sampled grid of highest log p(x, z) among `samples` draws from the
    run's posterior proposal: (codes (N, h, w), log p(x, z) (N,), log q (N,)).

    Batch b draws from a generator seeded with (seed, b), so under torchrun each rank encodes a
    contiguous block of batches (`distributed.map_batches`) and every rank gets the grids in
    order: the one-process grids exactly."""
    proposal = proposal_of(run)

    def best(batch, generator):
        x = batch.images.to(run.device)
        draws = proposal.sample(x, samples, generator=generator)
        joint = run.model.log_joint_grouped(x, draws.z.codes, samples).view(-1, samples)
        pick = joint.argmax(1)
        rows = torch.arange(x.shape[0], device=x.device) * samples + pick
        return (draws.z.codes[rows].cpu(), joint.gather(1, pick.unsqueeze(1)).squeeze(1).cpu(),
                (draws.log_pf - draws.log_pb)[rows].cpu())

    parts = distributed.map_batches(in_order_batches(images, batch_size), best, seed,
                                    device=run.device, progress=progress)
    codes, joints, lqs = zip(*parts)
    return torch.cat(codes), torch.cat(joints), torch.cat(lqs)


def run_nll(run, images: torch.Tensor, samples: int, batch_size: int = 16, seed: int = 0,
            progress=None) -> dict:
    """The test NLL figures of `evaluate`: M = `samples`, M = 1 and M = 100 from one pass.

    VQ-VAE's code is deterministic (one draw, −log p(x, z*), a bound); exact EM's proposal is
    the exact posterior (the figure is exact)."""
    proposal = proposal_of(run)
    exact = getattr(proposal, "exact", False)
    deterministic = getattr(proposal, "deterministic", False)
    m = 1 if deterministic else samples
    estimates = importance_sampled_nll(run.model, proposal, in_order_batches(images, batch_size),
                                       m, also=(1, 100), chunk=256, seed=seed,
                                       device=run.device, progress=progress, shard=True)
    main = estimates[m]
    out = {"nll_nats": main.nll_nats, "nll_stderr": main.nll_stderr,
           "bits_per_dim": main.bits_per_dim, "nll_is_bound": not exact,
           "samples": m, "num_images": main.num_images,
           "nll_method": ("exact posterior (enumeration)" if exact else
                          "deterministic code: -log p(x, z*)" if deterministic else
                          f"importance sampling, M={m}")}
    for extra in (1, 100):
        if extra in estimates:
            out[f"nll_nats_m{extra}"] = estimates[extra].nll_nats
            out[f"nll_stderr_m{extra}"] = estimates[extra].nll_stderr
    return out
