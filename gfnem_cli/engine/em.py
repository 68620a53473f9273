"""The EM loop of GFlowNet-EM (DESIGN.md §4), for any family of latent-variable models.

Hu, Malkin, Jain, Everett, Graikos & Bengio (ICML 2023), "GFlowNet-EM for learning
compositional latent variable models". One training step on a batch of inputs x:

1. **E-step** (`estep.GFlowNetEStep`): draw trajectories with exploration, compute the
   objective on them, and step the sampler's parameters φ (log rewards detached).
2. **M-step**, only when an exponential moving average of the E-loss over the previous
   batches is below τ(g) (`schedules.ThresholdSchedule`; g counts M-steps; the current batch
   is left out of the decision so that M-steps do not select batches by their own E-loss):
   draw z from the sampler (optionally refined by local search, or reusing the E-step's
   latents), minimise −mean log p_θ(x, z) (or a family's `RaoBlackwellizedMStep` statistic,
   e.g. labels summed out); with `importance_weighted`, minimise −Σ_m w̃_m log p_θ(x, z_m) per
   x instead, with w̃ = softmax_m(log p_θ(x, z_m) + log P_B(τ_m | z_m) − log q(τ_m)) over the
   M samples of each x (q the density the samples were actually drawn from: the behaviour
   policy). Only θ moves.
3. **Sleep phase** (optional; the family's `SleepPhase`): sample (x̃, z̃) from the model and
   train P_F by maximum likelihood on a trajectory to z̃.

With `alternate_every` = k > 0 the steps come in phases instead, as in the official VAE
code: k M-step-only steps (θ moves on fresh draws from the sampler, no E-step), then k
E-step-only steps (φ and the sleep phase), and so on from an M phase at step 0; the E-loss
gate is then not consulted.

The baselines run through the same loop by swapping the E-step (`estep.PosteriorEStep`).

Every loss and gradient norm is checked before any optimizer step (`optimizer_step.settle`):
a NaN or infinite loss or gradient norm raises `NonFiniteLoss` with all gradients cleared and
no parameter, optimizer or schedule state changed (a Markov-chain E-step may have moved its
chains, which stay valid chain states). The E-step gradient never reaches θ: log rewards are
detached and θ's gradients are cleared after the E-step backward pass, whatever the family
does. A family plugs in through `family.py`; this module never imports one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from gfnem_cli.engine import distributed
from gfnem_cli.engine.family import CountsUnits, Draw, LatentFamily, RaoBlackwellizedMStep
from gfnem_cli.engine.schedules import LearningRateSchedule, MovingAverage, ThresholdSchedule
from gfnem_cli.engine.optimizer_step import clear_grads, clip_norm, settle

@dataclass
class EMOptions:
    """Under data parallelism the E-loss the gate reads is the global batch's (an all-reduced
    mean, `distributed.weighted_mean`), so all ranks take the same M-step decision and keep
    identical EM state."""
    threshold: ThresholdSchedule = ThresholdSchedule(math.inf, math.inf, 0)
    ema_decay: float = 0.9
    mstep_samples: int = 1
    importance_weighted: bool = False
    model_grad_clip: float = 3.0
    alternate_every: int = 0
    lr_schedule: LearningRateSchedule | None = None   # θ's lr by update count; None = Adam's own

    def phase(self, step: int) -> str | None:
        """"m" or "e" when the steps alternate in phases, else None (the gate decides)."""
        if self.alternate_every <= 0:
            return None
        return "m" if (step // self.alternate_every) % 2 == 0 else "e"


class EMLoop:
    """A trainer `Method`: one EM step per batch, validation, and exact-resume state.

    `modules` maps state-dict keys to the modules to save (e.g. {"model": θ, "sampler": φ});
    `validate` returns the validation metrics (with the family's selection metric).
    """

    def __init__(self, family: LatentFamily, estep, model_optimizer: torch.optim.Optimizer,
                 model_parameters: Iterable[torch.nn.Parameter], options: EMOptions,
                 validate: Callable[[], dict], modules: dict[str, torch.nn.Module]):
        self.family, self.estep, self.options = family, estep, options
        self.model_optimizer = model_optimizer
        self.model_parameters = list(model_parameters)
        self._validate, self.modules = validate, modules
        if options.alternate_every > 0 and getattr(estep, "mstep_reuse_samples", False):
            raise ValueError("an M phase has no E-step latents to reuse: alternating phases "
                             "need fresh M-step draws")
        self.ema = MovingAverage(options.ema_decay)
        self.model_updates = 0          # M-steps taken (the trainer's max_model_updates reads it)
        self.steps = 0

    # --------------------------------------------------------------------------- helpers
    def _all_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model_parameters) + list(getattr(self.estep, "parameters", []))

    # --------------------------------------------------------------------------- one step
    def train_step(self, batch: Any) -> dict[str, float]:
        """One EM step. The device is waited for once, before the optimizer steps, when every
        loss and gradient norm is checked finite and the logged figures are read together
        (`optimizer_step.settle`): the gate reads the moving average of the batches before
        this one, which the host already has (only a run's first step, which has none, reads
        its own E-loss first)."""
        for module in self.modules.values():
            module.train()
        opts, estep = self.options, self.estep
        clear_grads(self._all_parameters())
        metrics: dict = {}
        losses: list[torch.Tensor] = []
        do_m, tau = True, None
        phase = opts.phase(self.steps)
        do_e = estep.trains_sampler and phase != "m"

        if do_e:
            loss, e_loss, stats = estep.loss(batch)
            loss.backward()
            losses.append(loss)
            clear_grads(self.model_parameters)            # a sampler loss never moves θ
            e_global = distributed.weighted_mean(e_loss)    # read with the figures
            # gate on the average of the batches before this one: a batch's own E-loss must not
            # choose whether θ learns from it (with length-bucketed batches that would pick
            # short sentences, whose E-loss is smaller, for nearly every M-step)
            gate = self.ema.value if self.ema.value is not None else float(e_global)
            tau = opts.threshold(self.model_updates)
            do_m = gate < tau if phase is None else False
            metrics.update(loss=e_global, e_loss=e_global, e_loss_gate=gate, tau=tau, **stats)
            sleep, sleep_stats = estep.sleep_loss(batch, self.steps)
            if sleep is not None:
                sleep.backward()
                losses.append(sleep)
                clear_grads(self.model_parameters)
                metrics.update(sleep_stats)

        if do_m:
            draw = estep.draw(batch, opts.mstep_samples, opts.importance_weighted)
            log_p, log_joint = self._mstep_terms(batch, draw)
            batch_size = log_p.shape[0] // draw.n
            if opts.importance_weighted:
                grouped = log_p.view(batch_size, draw.n)
                w = torch.softmax(log_joint.view(batch_size, draw.n).double()
                                  + draw.log_pb_minus_log_q.view(batch_size, draw.n).double(),
                                  dim=1).to(log_p.dtype)
                m_loss = -(w * grouped).sum(1).mean()
                metrics["iw_ess"] = (1.0 / (w.detach().double() ** 2).sum(1)).mean()
            else:
                m_loss = -log_p.mean()
            m_loss.backward()
            losses += [log_p.detach(), m_loss]
            metrics["mstep_loss"] = m_loss.detach()
            metrics["mstep_log_joint"] = log_p.detach().mean()
            if isinstance(self.family, CountsUnits):
                units = self.family.num_units(batch) * draw.n
                metrics[f"mstep_nll_per_{self.family.nll_unit}"] = (
                    -log_p.detach().double().sum() / units)
            metrics.update(draw.stats)
            if not do_e:
                metrics["loss"] = metrics["mstep_loss"]

        # clip, then check every loss and norm (one wait), then step
        everything = self._all_parameters()
        norms = []
        if do_e:
            norms.append(clip_norm(estep.parameters, estep.grad_clip))
            metrics["sampler_grad_norm"] = norms[-1] if norms[-1] is not None else 0.0
        if do_m:
            norms.append(clip_norm(self.model_parameters, opts.model_grad_clip))
            metrics["model_grad_norm"] = norms[-1] if norms[-1] is not None else 0.0
        metrics = settle(losses, norms, metrics, clear=everything)
        if do_e:
            estep.optimizer.step()
        if do_m:
            if opts.lr_schedule is not None:
                metrics["model_lr"] = opts.lr_schedule.apply(self.model_optimizer,
                                                             self.model_updates)
            self.model_optimizer.step()
            self.model_updates += 1
        if do_e:
            metrics["e_loss_ema"] = self.ema.update(metrics["e_loss"])
        self.steps += 1
        clear_grads(everything)
        metrics.update(mstep=float(do_m), estep=float(do_e),
                       model_updates=float(self.model_updates))
        return metrics

    def _mstep_terms(self, batch: Any, draw: Draw) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(what the M-step maximizes, differentiable; log p_θ(x, z) detached when the
        importance weights need it, else None). The weights are p_θ(x, z) P_B / q of the whole
        latent even when the integrand is Rao-Blackwellized: the self-normalized estimate of
        E_{p(z|x)}[∇ f(z)] is consistent for any f, so for f = log p_θ(x, part of z) too."""
        family = self.family
        if not isinstance(family, RaoBlackwellizedMStep):
            log_p = family.log_joint(batch, draw.z, draw.n)
            return log_p, log_p.detach() if self.options.importance_weighted else None
        log_p = family.mstep_log_likelihood(batch, draw.z, draw.n)
        if not self.options.importance_weighted:
            return log_p, None
        with torch.no_grad():
            log_joint = family.log_joint(batch, draw.z, draw.n)   # a NaN reaches m_loss
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
        """Checkpoint keys; runs written before the neutral names (`grammar_optimizer`,
        em.`grammar_updates`) are mapped onto these by `checkpoint.load`."""
        state: dict[str, Any] = {name: m.state_dict() for name, m in self.modules.items()}
        state["model_optimizer"] = self.model_optimizer.state_dict()
        state["estep"] = self.estep.state_dict()
        state["em"] = {"ema": self.ema.state_dict(), "model_updates": self.model_updates,
                       "steps": self.steps}
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])
        self.model_optimizer.load_state_dict(state["model_optimizer"])
        self.estep.load_state_dict(state["estep"])
        self.ema.load_state_dict(state["em"]["ema"])
        self.model_updates = state["em"]["model_updates"]
        self.steps = state["em"]["steps"]
