"""The two E-steps of the EM loop (DESIGN.md §4): a trained GFlowNet sampler, or a fixed
posterior procedure for the baselines.

- `GFlowNetEStep` draws N trajectories per input with exploration (tempered and/or ε-uniform
  behaviour policy; the loss is always on the untempered policy, whose log-prob the sampler
  returns as `log_pf`), optionally refined by back-and-forth local search; sets
  log_reward = log p_θ(x, z), **detached**; returns the chosen objective for φ to minimise,
  and an optional sleep-phase loss. It also draws the M-step's latents: fresh samples at
  `mstep_temperature` (or the E-step's own latents), optionally refined by local search.
- `PosteriorEStep` has no sampler to train: latents come from a fixed procedure (exact
  posterior sampling, Markov chains), so the M-step runs at every step.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterable

import torch

from gfnem_cli.engine import row_noise
from gfnem_cli.engine.family import (LOCAL_SEARCH_LOSSES, Draw, Exploration, LocalSearch,
                                     SamplerFamily, SleepPhase)
from gfnem_cli.engine.objectives.off_policy import check_on_policy
from gfnem_cli.engine.trajectories import Trajectories


class GFlowNetEStep:
    """Trains a GFlowNet sampler of the posterior, and draws the M-step's latents from it.

    `parameters`: the sampler's parameters (for gradient clipping); `optimizer` steps them.
    M-step draws: fresh samples at `mstep_temperature` (or the E-step's latents with
    `mstep_reuse_samples`, as the paper's code does), then `mstep_local_search_rounds` rounds
    of local search. Importance weighting needs the density the latents were drawn from, so
    it refuses local-search-refined latents.
    """

    trains_sampler = True

    def __init__(self, family: SamplerFamily, objective: Callable[[Trajectories], torch.Tensor],
                 optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter], *,
                 samples_per_input: int = 1, exploration: Exploration = Exploration(),
                 grad_clip: float = 3.0, need_flows: bool = False, sleep_weight: float = 0.0,
                 sleep_period: int = 1, sleep_count: int = 0, mstep_temperature: float = 1.0,
                 mstep_local_search_rounds: int = 0, mstep_reuse_samples: bool = False):
        if samples_per_input < 1:
            raise ValueError("samples_per_input must be at least 1")
        if sleep_weight > 0 and not isinstance(family, SleepPhase):
            raise ValueError("a sleep phase needs family.dream and family.log_pf_of")
        if (exploration.local_search_rounds or mstep_local_search_rounds) and not isinstance(
                family, LocalSearch):
            raise ValueError("local search needs family.refine")
        if exploration.local_search_loss not in LOCAL_SEARCH_LOSSES:
            raise ValueError(f"local_search_loss must be one of {LOCAL_SEARCH_LOSSES}")
        self.family, self.objective, self.optimizer = family, objective, optimizer
        self.parameters = list(parameters)
        self.samples_per_input, self.exploration = samples_per_input, exploration
        self.grad_clip, self.need_flows = grad_clip, need_flows
        self.sleep_weight, self.sleep_period = sleep_weight, max(1, sleep_period)
        self.sleep_count = sleep_count
        self.mstep_temperature = mstep_temperature
        self.mstep_local_search_rounds = mstep_local_search_rounds
        self.mstep_reuse_samples = mstep_reuse_samples
        self._last: Trajectories | None = None

    # ----------------------------------------------------------------------------- E-step
    def loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(loss to minimise in φ, the E-loss the threshold reads, stats), the last two as
        detached device tensors (or floats), read when the step waits for the device."""
        traj = self.family.sample(batch, self.samples_per_input, self.exploration,
                                  self.need_flows)
        if traj.log_reward is None:
            with torch.no_grad():
                traj.log_reward = self.family.log_joint(batch, traj.z, traj.num_per_input)
        traj.log_reward = traj.log_reward.detach()
        check_on_policy(self.objective, traj)
        e_loss = self.objective(traj)
        stats = {"mean_log_reward": traj.log_reward.float().mean()}
        stats.update(_objective_stats(self.objective))
        loss = e_loss
        if self.exploration.local_search_rounds > 0:
            refined = self.family.refine(batch, traj, self.exploration,
                                         self.exploration.local_search_rounds, True,
                                         self.need_flows)
            if self.exploration.local_search_loss == "path":
                if refined.path_residual is None:
                    raise ValueError("local_search_loss 'path' needs the family's path residual")
                ls_loss = refined.path_residual.pow(2).mean()    # TB's scale: nats²
            else:
                check_on_policy(self.objective, refined.trajectories)
                ls_loss = self.objective(refined.trajectories)
            loss = 0.5 * (e_loss + ls_loss)
            stats["e_loss_local_search"] = ls_loss.detach()
            stats["e_ls_acceptance"] = refined.acceptance_rate
            stats["mean_log_reward_local_search"] = refined.log_reward.float().mean()
        self._last = traj
        return loss, e_loss.detach(), stats

    def sleep_loss(self, batch: Any, step: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        if self.sleep_weight <= 0 or step % self.sleep_period:
            return None, {}
        count = self.sleep_count or self.family.batch_size(batch)
        # With train.row_noise a dream's draws are keyed by its row: a rank dreams as many as
        # its shard has rows, numbered like them, but a fixed em.sleep_batch_size is dreamt
        # whole by every rank, numbered from 0 as one process numbers it (the ranks' equal
        # means then average to the one-process figure).
        with row_noise.numbered_from(0) if self.sleep_count else nullcontext():
            x, z = self.family.dream(count)
            nll = -self.family.log_pf_of(x, z).mean()
        return self.sleep_weight * nll, {"sleep_nll": nll.detach()}

    # ----------------------------------------------------------------------------- draws
    @torch.no_grad()
    def draw(self, batch: Any, n: int, importance_weighted: bool) -> Draw:
        if importance_weighted and self.mstep_local_search_rounds > 0:
            raise ValueError("an importance-weighted M-step needs the density its latents were "
                             "drawn from; local-search-refined latents have none")
        if self.mstep_reuse_samples and self._last is not None:
            traj = self._last
        else:
            explore = Exploration(temperature=self.mstep_temperature,
                                  local_search_steps=self.exploration.local_search_steps)
            traj = self.family.sample(batch, n, explore, False)
        n = traj.num_per_input
        stats: dict[str, float] = {}
        z = traj.z
        if self.mstep_local_search_rounds > 0:
            if traj.log_reward is None:
                traj.log_reward = self.family.log_joint(batch, traj.z, n).detach()
            explore = Exploration(temperature=self.mstep_temperature,
                                  local_search_steps=self.exploration.local_search_steps)
            refined = self.family.refine(batch, traj, explore, self.mstep_local_search_rounds,
                                         False, False)
            z = refined.z
            stats["mstep_ls_acceptance"] = refined.acceptance_rate
        log_ratio = None
        if importance_weighted:
            q = traj.behaviour_log_pf if traj.behaviour_log_pf is not None else traj.log_pf
            log_ratio = (traj.log_pb - q).detach()
        return Draw(z, n, log_ratio, stats)

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class PosteriorEStep:
    """A baseline E-step: latents from a fixed procedure (exact posterior sampling, MCMC).

    `draw_fn(batch, n) -> (z, stats)`; `state` (optional) is anything with state_dict /
    load_state_dict that must survive a resume (e.g. persistent Markov chains).
    """

    trains_sampler = False

    def __init__(self, draw_fn: Callable[[Any, int], tuple[Any, dict[str, float]]],
                 state: Any = None):
        self.draw_fn, self.state = draw_fn, state

    @torch.no_grad()
    def draw(self, batch: Any, n: int, importance_weighted: bool) -> Draw:
        if importance_weighted:
            raise ValueError("importance weighting needs a sampler with known proposal "
                             "probabilities")
        z, stats = self.draw_fn(batch, n)
        return Draw(z, n, None, stats)

    def state_dict(self) -> dict:
        return {"state": self.state.state_dict() if self.state is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.state is not None and state.get("state") is not None:
            self.state.load_state_dict(state["state"])


def _objective_stats(objective) -> dict[str, float]:
    out = {}
    for key, value in getattr(objective, "last_stats", {}).items():
        if key == "loss":
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[f"obj_{key}"] = value.detach()       # read with the step's other figures
            continue
        try:
            out[f"obj_{key}"] = float(value)
        except (TypeError, ValueError):
            pass
    return out
