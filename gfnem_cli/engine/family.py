"""The contract a family implements to train through the engine (DESIGN.md §2, §4).

A family is a latent-variable model p_θ(x, z) (`LatentFamily`) and, for GFlowNet-EM, a
trainable sampler of p_θ(z | x) (`SamplerFamily`). Batches and latents are opaque to the
engine: it only hands them back to the family. What a family may offer beyond that is one
small typed `Protocol` per capability, checked with `isinstance` (they are
`runtime_checkable`), never by probing for a method name:

- `LocalSearch`          refine(...) -> Refined: back-and-forth local search on sampled latents
- `SleepPhase`           dream(count) and log_pf_of(x, z): the sleep phase of the E-step
- `RaoBlackwellizedMStep` mstep_log_likelihood(...): a lower-variance M-step statistic
- `CountsUnits`          nll_unit ("token", "pixel", ...) and num_units(batch): the unit the
                         M-step's NLL is logged per (`mstep_nll_per_<unit>`)

`Exploration` says how the E-step samples, `Draw` what the M-step receives, `Refined` what
local search returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from gfnem_cli.engine.trajectories import Trajectories


LOCAL_SEARCH_LOSSES = ("rescore", "path")     # what local-search-refined latents train


@dataclass(frozen=True)
class Exploration:
    """How the E-step samples: behaviour policy q = (1−ε)·softmax(logits/T) + ε·uniform,
    then `local_search_rounds` rounds of back-and-forth MH refinement (k = local_search_steps
    backward steps and as many forward ones). What the refined latents train
    (`local_search_loss`): "rescore", the objective on their teacher-forced trajectories, or
    "path", the balance of the last round's back-and-forth path (`Refined.path_residual`)."""
    temperature: float = 1.0
    epsilon: float = 0.0
    local_search_rounds: int = 0
    local_search_steps: int = 2
    local_search_loss: str = "rescore"

    @property
    def on_policy(self) -> bool:
        return self.temperature == 1.0 and self.epsilon == 0.0 and self.local_search_rounds == 0


@dataclass
class Refined:
    """What local search hands back: the refined latents and, when asked, their trajectories."""
    z: Any
    log_reward: torch.Tensor                 # (B·N,) detached
    acceptance_rate: float | torch.Tensor    # a device scalar is read with the step's figures
    trajectories: Trajectories | None = None  # for_loss, "rescore": the latents' trajectories
    path_residual: torch.Tensor | None = None  # for_loss, "path": (B·N,) log-flow mismatch of
    # the last round's path x → s → x', with gradients; zero for a balanced sampler


@dataclass
class Draw:
    """Latents for the M-step: B·n of them, each input's n contiguous."""
    z: Any
    n: int
    log_pb_minus_log_q: torch.Tensor | None = None   # (B·n,) for importance weighting
    stats: dict[str, float] = field(default_factory=dict)


class LatentFamily(Protocol):
    """The latent model: scores log p_θ(x, z) for the N latents of each input of a batch."""

    def log_joint(self, batch: Any, z: Any, n: int) -> torch.Tensor:
        """(B·n,) log p_θ(x_b, z_{b,k}), row b·n + k, differentiable in θ."""

    def batch_size(self, batch: Any) -> int: ...


class SamplerFamily(LatentFamily, Protocol):
    """A latent model with a trainable sampler of p_θ(z | x).

    sample(batch, n, exploration, need_flows) -> Trajectories with z; log_reward may be left
    None (the loop fills it with log_joint, detached) but must be set when need_flows.
    """

    def sample(self, batch: Any, n: int, exploration: Exploration,
               need_flows: bool) -> Trajectories: ...


# ------------------------------------------------------------------------ capabilities
@runtime_checkable
class LocalSearch(Protocol):
    """Back-and-forth local search: `rounds` rounds of k = exploration.local_search_steps
    backward steps with P_B and as many forward with P_F, each accepted by Metropolis–Hastings;
    `for_loss` (the E-step's rounds): the training signal `exploration.local_search_loss`
    names comes back with them (the M-step's draws need none)."""

    def refine(self, batch: Any, traj: Trajectories, exploration: Exploration, rounds: int,
               for_loss: bool, need_flows: bool) -> Refined: ...


@runtime_checkable
class SleepPhase(Protocol):
    """Samples from the model and the sampler's log-probability of reaching them."""

    def dream(self, count: int) -> tuple[Any, Any]:
        """(x̃, z̃) ~ p_θ, `count` of them."""

    def log_pf_of(self, x: Any, z: Any) -> torch.Tensor:
        """(count,) log P_F of one trajectory to each z, differentiable in φ."""


@runtime_checkable
class RaoBlackwellizedMStep(Protocol):
    """What the M-step maximizes instead of log_joint: a statistic of z (e.g. log p_θ(x, part
    of z), the rest summed out) whose expected gradient under p_θ(z | x) is ∇ log p_θ(x)."""

    def mstep_log_likelihood(self, batch: Any, z: Any, n: int) -> torch.Tensor: ...


@runtime_checkable
class CountsUnits(Protocol):
    """The unit a family's NLL is per: `nll_unit` names it, `num_units(batch)` counts it."""

    nll_unit: str

    def num_units(self, batch: Any) -> int: ...


__all__ = ["Exploration", "Refined", "Draw", "LatentFamily", "SamplerFamily", "LocalSearch",
           "SleepPhase", "RaoBlackwellizedMStep", "CountsUnits"]
