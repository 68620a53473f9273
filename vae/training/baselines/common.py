"""What the four baselines share: the decoder fed embeddings instead of codes, the prior fed
(straight-through) one-hot codes, the validation ELBO of a factorized encoder, and a base
`Method` owning the device, the step counter, a private random generator and the state.

The base keeps the method's randomness in its own `torch.Generator` (saved in `state_dict`),
so a resumed run draws exactly the samples the uninterrupted one would have, whatever else
uses the global generator; validation draws from a fresh generator with a fixed seed, so it
never perturbs training and two validations of the same parameters agree.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from gfnem_cli.engine import GfnemError, checked_step, distributed
from vae.data.batching import ImageBatch
from vae.models.prior import AutoregressivePrior
from vae.training.baselines.encoder import entropy, log_q, sample_codes

VALID_SEED = 12345


def make_adam(groups, betas=(0.9, 0.999)) -> torch.optim.Adam:
    return torch.optim.Adam(groups, betas=tuple(betas))


def decode_embeddings(decoder: nn.Module, embeddings: torch.Tensor) -> torch.Tensor:
    """(M, h, w, D) code embeddings -> (M, H, W) pixel logits: `Decoder.forward` after its
    dictionary look-up, so a relaxed (Gumbel) or straight-through (VQ) embedding can be
    decoded and differentiated. `decoder(codes)` equals this on `dictionary(codes)` (tested)."""
    h = embeddings.permute(0, 3, 1, 2)
    return decoder.upsample(decoder.blocks(decoder.stem(h))).squeeze(1)


def bernoulli_log_likelihood(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(M,) Σ_pixels x·ℓ − softplus(ℓ), as `Decoder.log_likelihood`."""
    x = images.to(logits.dtype)
    return -nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none").flatten(1).sum(1)


def prior_log_prob_relaxed(prior: nn.Module, one_hot: torch.Tensor) -> torch.Tensor:
    """(M,) log p(z) for one-hot codes (M, h, w, K) that may carry straight-through gradients.

    The autoregressive prior reads its input as one-hot planes, so feeding the straight-through
    sample there lets the encoder's gradient pass through the prior's context as well as its
    own cell (equal to `prior.log_prob` on hard one-hots, tested). A prior without that form
    (uniform: a constant) is scored on the hard codes."""
    if isinstance(prior, AutoregressivePrior):
        logits = prior.net(one_hot.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return (torch.log_softmax(logits, -1) * one_hot).flatten(1).sum(1)
    return prior.log_prob(one_hot.argmax(-1))


def check_encoder(encoder: nn.Module, outputs: int, grid, what: str) -> None:
    """A recipe's encoder must emit `outputs` numbers per cell of the decoder's grid."""
    if encoder.outputs != outputs or tuple(encoder.grid) != tuple(grid):
        raise GfnemError(f"the encoder gives {encoder.outputs} outputs per cell on a "
                         f"{tuple(encoder.grid)} grid; {what} needs {outputs} on {tuple(grid)}",
                         hint="build FactorizedEncoder(outputs, vae.grid)")


class BaselineMethod:
    """The trainer `Method` skeleton: subclasses give `loss(images) -> (loss, report)`,
    `_train_parameters()`, `_after_step(images)` and `validate_batch(images)`."""

    name = "baseline"
    nll_is_bound = True

    def __init__(self, vae: nn.Module, valid_batches: Iterable[ImageBatch], device="cpu",
                 seed: int = 0, grad_clip: float = 0.0, valid_samples: int = 1):
        if valid_samples < 1:
            raise GfnemError(f"valid_samples must be at least 1, got {valid_samples}")
        self.device = torch.device(device)
        self.vae = vae.to(self.device)
        self.valid_batches = list(valid_batches)
        self.grad_clip, self.valid_samples = grad_clip, valid_samples
        # each rank of a data-parallel run draws its own noise (rank 0: the recipe's seed)
        self.seed = distributed.rank_seed(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.steps = 0
        self.modules: dict[str, nn.Module] = {"vae": self.vae}
        self.optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ Method protocol
    def train_step(self, batch: ImageBatch) -> dict[str, float]:
        for module in self.modules.values():
            module.train()
        images = batch.images.to(self.device)
        loss, report = self.loss(images)
        norm = checked_step(loss, self.optimizer, self._all_parameters(), self.grad_clip)
        values = torch.stack([loss.detach().double().reshape(())]
                             + [v.detach().double().reshape(()) for v in report.values()])
        metrics = {"grad_norm": norm, **dict(zip(["loss", *report], values.tolist()))}
        self._after_step(images)
        metrics.update(self._step_info())
        self.steps += 1
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        for module in self.modules.values():
            module.eval()
        generator = torch.Generator(device=self.device).manual_seed(VALID_SEED)
        total, count, pixels = 0.0, 0, 1
        for batch in self.valid_batches:
            images = batch.images.to(self.device)
            nll = self.validate_batch(images, generator)
            total += float(nll.double().sum())
            count += images.shape[0]
            pixels = images[0].numel()
        mean = total / max(count, 1)
        return {"val_nll_nats": mean, "val_bits_per_dim": mean / (pixels * math.log(2)),
                "val_nll_is_bound": self.nll_is_bound}

    def state_dict(self) -> dict:
        return {"method": self.name, "steps": self.steps,
                "generator": self.generator.get_state(),
                "modules": {k: m.state_dict() for k, m in self.modules.items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"a {state.get('method')!r} state cannot load into {self.name!r}")
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.steps = int(state["steps"])
        if distributed.world().rank > 0:      # the checkpoint holds rank 0's generator
            self.generator.manual_seed(self.seed + self.steps)

    # ------------------------------------------------------------------ for subclasses
    def _all_parameters(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for module in self.modules.values():
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _step_info(self) -> dict[str, float]:
        """Host-side figures of the step just taken (no tensor, no sync)."""
        return {}

    def _after_step(self, images: torch.Tensor) -> None:
        """Updates outside the optimizer (VQ-VAE's EMA codebook), after a checked step."""

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def validate_batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def factorized_elbo(vae: nn.Module, logits: torch.Tensor, images: torch.Tensor, samples: int,
                    generator: torch.Generator) -> torch.Tensor:
    """(B,) a Monte Carlo estimate (unbiased) of the ELBO E_q[log p(x, z)] + H[q(· | x)]
    for a factorized q with logits (B, hw, K): `samples` draws per image, the entropy exact."""
    b = images.shape[0]
    grid = tuple(vae.grid)
    log_probs = torch.log_softmax(logits, -1)
    codes = sample_codes(log_probs, samples, generator)
    joint = vae.log_joint_grouped(images, codes.view(-1, *grid), samples).view(b, samples)
    return joint.mean(1) + entropy(log_probs)


__all__ = ["BaselineMethod", "decode_embeddings", "bernoulli_log_likelihood",
           "prior_log_prob_relaxed", "factorized_elbo", "make_adam", "log_q"]
