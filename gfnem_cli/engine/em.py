"""The EM loop of GFlowNet-EM (DESIGN.md §4), for any family of latent-variable models.

Hu, Malkin, Jain, Everett, Graikos & Bengio (ICML 2023), "GFlowNet-EM for learning
compositional latent variable models". One training step on a batch of inputs x:

1. **E-step** (`GFlowNetEStep`): draw N trajectories per x from the sampler with exploration
   (tempered and/or ε-uniform behaviour policy; the loss is always on the untempered policy,
   whose log-prob the sampler returns as `log_pf`), optionally refined by back-and-forth
   local search; set log_reward = log p_θ(x, z), **detached**; compute the chosen objective
   and step the sampler's parameters φ.
2. **M-step**, only when an exponential moving average of the E-loss over the previous
   batches is below τ(g) (`schedules.ThresholdSchedule`; g counts M-steps; the current batch
   is left out of the decision so that M-steps do not select batches by their own E-loss):
   draw z from the sampler (optionally refined by local search, or reusing the E-step's
   latents), minimise −mean log p_θ(x, z) (or a family's Rao-Blackwellized
   `mstep_log_likelihood`, e.g. labels summed out);
   with `importance_weighted`, minimise −Σ_m w̃_m log p_θ(x, z_m) per x instead, with
   w̃ = softmax_m(log p_θ(x, z_m) + log P_B(τ_m | z_m) − log q(τ_m)) over the M samples of each
   x (q the density the samples were actually drawn from: the behaviour policy). Only θ moves.
3. **Sleep phase** (optional; `sleep_weight`, every `sleep_period` steps): sample (x̃, z̃) from
   the model and train P_F by maximum likelihood on a trajectory to z̃.

The baselines run through the same loop by swapping the E-step (`PosteriorEStep`): exact
posterior sampling (z from the inside algorithm) or MC-EM (z from persistent Markov chains);
they have no sampler to train, so the M-step runs at every step.

Every loss is checked before any optimizer step: a NaN or infinite loss or gradient norm
raises `NonFiniteLoss` with all gradients cleared and no parameter, optimizer or schedule state
changed (a Markov-chain E-step may have moved its chains, which stay valid chain states).
The E-step gradient never reaches θ: log rewards are detached and θ's gradients are cleared
after the E-step backward pass, whatever the family does.

A family plugs in through `SamplerFamily` (this module never imports a family). Batches are
opaque to the loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch

from gfnem_cli.engine.schedules import MovingAverage, ThresholdSchedule
from gfnem_cli.engine.trainer import NonFiniteLoss
from gfnem_cli.engine.trajectories import Trajectories


# ============================================================================ contracts
@dataclass(frozen=True)
class Exploration:
    """How the E-step samples: behaviour policy q = (1−ε)·softmax(logits/T) + ε·uniform,
    then `local_search_rounds` rounds of back-and-forth MH refinement (k = local_search_steps
    backward steps and as many forward ones)."""
    temperature: float = 1.0
    epsilon: float = 0.0
    local_search_rounds: int = 0
    local_search_steps: int = 2

    @property
    def on_policy(self) -> bool:
        return self.temperature == 1.0 and self.epsilon == 0.0 and self.local_search_rounds == 0


@dataclass
class Refined:
    """What local search hands back: the refined latents and, when asked, their trajectories."""
    z: Any
    log_reward: torch.Tensor                 # (B·N,) detached
    acceptance_rate: float
    trajectories: Trajectories | None = None


class LatentFamily(Protocol):
    """The latent model: scores log p_θ(x, z) for the N latents of each input of a batch."""

    def log_joint(self, batch: Any, z: Any, n: int) -> torch.Tensor:
        """(B·n,) log p_θ(x_b, z_{b,k}), row b·n + k, differentiable in θ."""

    def batch_size(self, batch: Any) -> int: ...

    # Optional (checked with hasattr):
    # mstep_log_likelihood(batch, z, n) -> (B·n,)  what the M-step maximizes instead of
    #     log_joint: a Rao-Blackwellized statistic of z (e.g. log p_θ(x, part of z), the rest
    #     summed out) whose expected gradient under p_θ(z | x) is also ∇ log p_θ(x).


class SamplerFamily(LatentFamily, Protocol):
    """A latent model with a trainable sampler of p_θ(z | x).

    sample(batch, n, exploration, need_flows) -> Trajectories with z; log_reward may be left
        None (the loop fills it with log_joint, detached) but must be set when need_flows.
    Optional (checked with hasattr):
    refine(batch, traj, exploration, rounds, rescore, need_flows) -> Refined   local search
    dream(count) -> (x, z)          samples from the model, for the sleep phase
    log_pf_of(x, z) -> (count,)     log P_F of one trajectory to each z, differentiable in φ
    num_tokens(batch) -> int        for a per-token M-step NLL in the logs
    """

    def sample(self, batch: Any, n: int, exploration: Exploration,
               need_flows: bool) -> Trajectories: ...


@dataclass
class Draw:
    """Latents for the M-step: B·n of them, each input's n contiguous."""
    z: Any
    n: int
    log_pb_minus_log_q: torch.Tensor | None = None   # (B·n,) for importance weighting
    stats: dict[str, float] = field(default_factory=dict)


# ============================================================================ E-steps
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
        if sleep_weight > 0 and not (hasattr(family, "dream") and hasattr(family, "log_pf_of")):
            raise ValueError("a sleep phase needs family.dream and family.log_pf_of")
        if (exploration.local_search_rounds or mstep_local_search_rounds) and not hasattr(
                family, "refine"):
            raise ValueError("local search needs family.refine")
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
    def loss(self, batch: Any) -> tuple[torch.Tensor, float, dict[str, float]]:
        """(loss to minimise in φ, the E-loss the threshold reads, stats)."""
        from gfnem_cli.engine.objectives import check_on_policy

        traj = self.family.sample(batch, self.samples_per_input, self.exploration,
                                  self.need_flows)
        if traj.log_reward is None:
            with torch.no_grad():
                traj.log_reward = self.family.log_joint(batch, traj.z, traj.num_per_input)
        traj.log_reward = traj.log_reward.detach()
        check_on_policy(self.objective, traj)
        e_loss = self.objective(traj)
        stats = {"mean_log_reward": float(traj.log_reward.float().mean())}
        stats.update(_objective_stats(self.objective))
        loss = e_loss
        if self.exploration.local_search_rounds > 0:
            refined = self.family.refine(batch, traj, self.exploration,
                                         self.exploration.local_search_rounds, True,
                                         self.need_flows)
            check_on_policy(self.objective, refined.trajectories)
            ls_loss = self.objective(refined.trajectories)
            loss = 0.5 * (e_loss + ls_loss)
            stats["e_loss_local_search"] = float(ls_loss.detach())
            stats["e_ls_acceptance"] = refined.acceptance_rate
            stats["mean_log_reward_local_search"] = float(refined.log_reward.float().mean())
        self._last = traj
        return loss, float(e_loss.detach()), stats

    def sleep_loss(self, batch: Any, step: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        if self.sleep_weight <= 0 or step % self.sleep_period:
            return None, {}
        count = self.sleep_count or self.family.batch_size(batch)
        x, z = self.family.dream(count)
        nll = -self.family.log_pf_of(x, z).mean()
        return self.sleep_weight * nll, {"sleep_nll": float(nll.detach())}

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


# ============================================================================ the loop
@dataclass
class EMOptions:
    """`reduce_loss` maps this process's E-loss to the value every process gates on (under
    data parallelism: an all-reduced mean), so that all ranks take the same M-step decision
    and keep identical EM state. Identity by default."""
    threshold: ThresholdSchedule = ThresholdSchedule(math.inf, math.inf, 0)
    ema_decay: float = 0.9
    mstep_samples: int = 1
    importance_weighted: bool = False
    grammar_grad_clip: float = 3.0
    reduce_loss: Callable[[float], float] | None = None


class EMLoop:
    """A trainer `Method`: one EM step per batch, validation, and exact-resume state.

    `modules` maps state-dict keys to the modules to save (e.g. {"model": θ, "sampler": φ});
    `validate` returns the validation metrics (with `val_nll_per_token`).
    """

    def __init__(self, family: LatentFamily, estep, grammar_optimizer: torch.optim.Optimizer,
                 grammar_parameters: Iterable[torch.nn.Parameter], options: EMOptions,
                 validate: Callable[[], dict], modules: dict[str, torch.nn.Module]):
        self.family, self.estep, self.options = family, estep, options
        self.grammar_optimizer = grammar_optimizer
        self.grammar_parameters = list(grammar_parameters)
        self._validate, self.modules = validate, modules
        self.ema = MovingAverage(options.ema_decay)
        self.grammar_updates = 0
        self.steps = 0

    @property
    def model_updates(self) -> int:
        """M-steps taken (the trainer's `max_model_updates` reads it)."""
        return self.grammar_updates

    # --------------------------------------------------------------------------- helpers
    def _all_parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.grammar_parameters)
        params += getattr(self.estep, "parameters", [])
        return params

    def _clear(self, params) -> None:
        for p in params:
            p.grad = None

    def _fail(self) -> None:
        self._clear(self._all_parameters())
        raise NonFiniteLoss

    def _check(self, value: torch.Tensor) -> None:
        if not bool(torch.isfinite(value.detach()).all()):
            self._fail()

    # --------------------------------------------------------------------------- one step
    def train_step(self, batch: Any) -> dict[str, float]:
        for module in self.modules.values():
            module.train()
        opts, estep = self.options, self.estep
        self._clear(self._all_parameters())
        metrics: dict[str, float] = {}
        do_m, ema_next, tau = True, None, None

        if estep.trains_sampler:
            loss, e_value, stats = estep.loss(batch)
            self._check(loss)
            loss.backward()
            self._clear(self.grammar_parameters)          # a sampler loss never moves θ
            if opts.reduce_loss is not None:
                e_value = float(opts.reduce_loss(e_value))
            ema_next = self.ema.peek(e_value)
            # gate on the average of the batches before this one: a batch's own E-loss must not
            # choose whether θ learns from it (with length-bucketed batches that would pick
            # short sentences, whose E-loss is smaller, for nearly every M-step)
            gate = self.ema.value if self.ema.value is not None else e_value
            tau = opts.threshold(self.grammar_updates)
            do_m = gate < tau
            metrics.update(loss=e_value, e_loss=e_value, e_loss_ema=ema_next, e_loss_gate=gate,
                           tau=tau, **stats)
            sleep, sleep_stats = estep.sleep_loss(batch, self.steps)
            if sleep is not None:
                self._check(sleep)
                sleep.backward()
                self._clear(self.grammar_parameters)
                metrics.update(sleep_stats)

        if do_m:
            draw = estep.draw(batch, opts.mstep_samples, opts.importance_weighted)
            log_p, log_joint = self._mstep_terms(batch, draw)
            self._check(log_p.detach().sum())
            batch_size = log_p.shape[0] // draw.n
            if opts.importance_weighted:
                grouped = log_p.view(batch_size, draw.n)
                w = torch.softmax(log_joint.view(batch_size, draw.n).double()
                                  + draw.log_pb_minus_log_q.view(batch_size, draw.n).double(),
                                  dim=1).to(log_p.dtype)
                m_loss = -(w * grouped).sum(1).mean()
                metrics["iw_ess"] = float((1.0 / (w.double() ** 2).sum(1)).mean())
            else:
                m_loss = -log_p.mean()
            self._check(m_loss)
            m_loss.backward()
            metrics["mstep_loss"] = float(m_loss.detach())
            metrics["mstep_log_joint"] = float(log_p.detach().mean())
            if hasattr(self.family, "num_tokens"):
                tokens = self.family.num_tokens(batch) * draw.n
                metrics["mstep_nll_per_token"] = float(-log_p.detach().double().sum()) / tokens
            metrics.update(draw.stats)
            if not estep.trains_sampler:
                metrics["loss"] = metrics["mstep_loss"]

        # every loss is finite: clip, check the norms, then step
        if estep.trains_sampler:
            norm = _clip(estep.parameters, estep.grad_clip)
            if not math.isfinite(norm):
                self._fail()
            metrics["sampler_grad_norm"] = norm
        if do_m:
            norm = _clip(self.grammar_parameters, opts.grammar_grad_clip)
            if not math.isfinite(norm):
                self._fail()
            metrics["grammar_grad_norm"] = norm
        if estep.trains_sampler:
            estep.optimizer.step()
        if do_m:
            self.grammar_optimizer.step()
            self.grammar_updates += 1
        if ema_next is not None:
            self.ema.update(metrics["e_loss"])
        self.steps += 1
        self._clear(self._all_parameters())
        metrics.update(mstep=float(do_m), grammar_updates=float(self.grammar_updates))
        return metrics

    def _mstep_terms(self, batch: Any, draw: Draw) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(what the M-step maximizes, differentiable; log p_θ(x, z) detached when the
        importance weights need it, else None). The weights are p_θ(x, z) P_B / q of the whole
        latent even when the integrand is Rao-Blackwellized: the self-normalized estimate of
        E_{p(z|x)}[∇ f(z)] is consistent for any f, so for f = log p_θ(x, part of z) too."""
        family = self.family
        if not hasattr(family, "mstep_log_likelihood"):
            log_p = family.log_joint(batch, draw.z, draw.n)
            return log_p, log_p.detach() if self.options.importance_weighted else None
        log_p = family.mstep_log_likelihood(batch, draw.z, draw.n)
        if not self.options.importance_weighted:
            return log_p, None
        with torch.no_grad():
            log_joint = family.log_joint(batch, draw.z, draw.n)
        self._check(log_joint.sum())
        return log_p, log_joint

    # --------------------------------------------------------------------------- trainer API
    def validate(self) -> dict[str, float]:
        for module in self.modules.values():
            module.eval()
        try:
            return self._validate()
        finally:
            for module in self.modules.values():
                module.train()

    def state_dict(self) -> dict:
        state: dict[str, Any] = {name: m.state_dict() for name, m in self.modules.items()}
        state["grammar_optimizer"] = self.grammar_optimizer.state_dict()
        state["estep"] = self.estep.state_dict()
        state["em"] = {"ema": self.ema.state_dict(), "grammar_updates": self.grammar_updates,
                       "steps": self.steps}
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])
        self.grammar_optimizer.load_state_dict(state["grammar_optimizer"])
        self.estep.load_state_dict(state["estep"])
        self.ema.load_state_dict(state["em"]["ema"])
        self.grammar_updates = state["em"]["grammar_updates"]
        self.steps = state["em"]["steps"]


def _clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    limit = max_norm if max_norm > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(params, limit))


def _objective_stats(objective) -> dict[str, float]:
    out = {}
    for key, value in getattr(objective, "last_stats", {}).items():
        if key == "loss":
            continue
        try:
            out[f"obj_{key}"] = float(value)
        except (TypeError, ValueError):
            pass
    return out
