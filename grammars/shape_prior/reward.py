"""The shape prior in GFlowNet-EM's reward: log R(x, z) = log p_θ(x, z) − E_ψ(shape(z)) / T(g).

Hu et al. (ICML 2023), §5.2: a black-box prior on tree shape, which only a sampler-based E-step
can use (no dynamic program sums over −E_ψ). The sampler, its local search and (with
`em.importance_weighted`) the M-step's weights read `ShapePriorReward`; the M-step still
maximizes log p_θ alone (`training.family.PriorFamily`): E_ψ is fixed, and it only tilts the
posterior the E-step targets.

T follows the authors' code (grammars/train.py, `get_ebm_temp(grammar_step)`, read in
GFNOrg/GFlowNet-EM): a function of the grammar updates g, from T_start to T_end over a horizon
H, then T_end; `geometric` T = T_start · (T_end / T_start)^(g / H) is their `exp` schedule, the
one their README's CFG + EBM command uses (1 → 1000 over 10,000 grammar updates, the run's
length); `linear` is their other choice. So the prior shapes the early grammar and fades.

`load_shape_prior(path)` reads a `method: shape-ebm` run (last.pt), with one-line errors for a
missing run, another kind of run, or no checkpoint. `ShapePriorEMLoop` adds the temperature
and the sampled trees' mean energy to each step's metrics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gfnem_cli.engine import EMLoop, GfnemError
from gfnem_cli.engine import checkpoint as ckpt
from gfnem_cli.engine.runs import (LAST, check_checkpoint_config, checkpoint_path,
                                   read_saved_config, saved_config)
from grammars.recipe import GRAMMAR_DEFAULTS
from grammars.shape_prior.energy import ShapeEnergy, build_energy
from grammars.shape_prior.shapes import as_shapes

SCHEDULES = ("geometric", "linear")
KEY = "em.shape_prior"


@dataclass(frozen=True)
class TemperatureSchedule:
    start: float = 1.0
    end: float = 1000.0
    horizon: int = 10000
    kind: str = "geometric"

    def __call__(self, updates: int) -> float:
        if self.horizon <= 0 or updates >= self.horizon:
            return float(self.end)
        f = updates / self.horizon
        if self.kind == "geometric":
            return float(self.start * math.exp(f * math.log(self.end / self.start)))
        if self.kind == "linear":
            return float(self.start + (self.end - self.start) * f)
        raise ValueError(f"unknown schedule {self.kind!r}; use one of {SCHEDULES}")


def schedule_from_config(config: dict) -> TemperatureSchedule:
    em = config["em"]
    horizon = em["shape_prior_temperature_horizon"] or config["train"]["max_model_updates"]
    return TemperatureSchedule(em["shape_prior_temperature_start"],
                               em["shape_prior_temperature_end"], int(horizon),
                               em["shape_prior_schedule"])


class ShapePriorReward:
    """What the sampler calls its reward: `log_joint` tilted by −E/T, `partial_log_joint` the
    grammar's (the prior is a terminal term: forward-looking flows absorb it, DESIGN §3).
    `updates()` gives g, the grammar updates so far (the EM loop's count)."""

    def __init__(self, model, prior: ShapeEnergy, schedule: TemperatureSchedule,
                 updates: Callable[[], int] = lambda: 0):
        self.model, self.prior, self.schedule, self.updates = model, prior, schedule, updates
        self._sum = self._count = None

    def temperature(self) -> float:
        return self.schedule(int(self.updates()))

    @torch.no_grad()
    def energy(self, trees) -> torch.Tensor:
        return self.prior(as_shapes(trees))

    def log_joint(self, ids, lengths, trees) -> torch.Tensor:
        log_p = self.model.log_joint(ids, lengths, trees)
        energy = self.energy(trees).to(log_p.dtype)
        total, count = energy.sum(), energy.numel()     # no host sync: read once per step
        self._sum = total if self._sum is None else self._sum + total
        self._count = count if self._count is None else self._count + count
        return log_p - energy / self.temperature()

    def partial_log_joint(self, ids, lengths, trees) -> torch.Tensor:
        return self.model.partial_log_joint(ids, lengths, trees)

    def stats(self) -> dict[str, float]:
        """The temperature and the mean energy of the trees scored since the last call."""
        out = {"shape_prior_temperature": self.temperature()}
        if self._count:
            out["shape_prior_energy"] = float(self._sum) / self._count
        self._sum = self._count = None
        return out


class ShapePriorEMLoop(EMLoop):
    """The engine's EM loop, with the prior's temperature and energy in each step's metrics."""

    def __init__(self, *args, reward: ShapePriorReward, **kwargs):
        super().__init__(*args, **kwargs)
        self.reward = reward
        reward.updates = lambda: self.model_updates

    def train_step(self, batch) -> dict[str, float]:
        temperature = self.reward.temperature()            # the T this step's rewards use
        metrics = super().train_step(batch)
        metrics.update(self.reward.stats(), shape_prior_temperature=temperature)
        return metrics


def load_shape_prior(path: str, device) -> ShapeEnergy:
    """E_ψ of a `method: shape-ebm` run directory (its last.pt), in eval mode on `device`."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise GfnemError(f"{KEY}={path!r}: no such run directory", hint="train the prior first: "
                         "`gfnem train recipes/synthetic-shape-ebm.yaml --out RUN`, then set "
                         f"{KEY}: RUN")
    try:
        config = read_saved_config(run_dir)
        kind = f"{config.get('family', 'grammar')} / {config.get('method', 'marginal')}"
        if config.get("family", "grammar") != "grammar" or config.get("method") != "shape-ebm":
            raise GfnemError(f"{KEY}: this is a {kind} run, not a tree-shape prior", run_dir,
                             hint="point it at a run trained with method: shape-ebm")
        config = saved_config(run_dir, GRAMMAR_DEFAULTS)
        where = checkpoint_path(run_dir, LAST)
        state = ckpt.load(where)
        check_checkpoint_config(state, config, run_dir, f"the checkpoint {where.name}")
        prior = build_energy(config["shape_ebm"])
        prior.load_state_dict(state["method"]["shape_prior"])
    except GfnemError as exc:
        message = exc.message if exc.message.startswith(KEY) else f"{KEY}: {exc.message}"
        raise GfnemError(message, exc.path, exc.line, exc.hint) from None
    except (KeyError, RuntimeError, TypeError) as exc:
        raise GfnemError(f"{KEY}: the checkpoint does not hold a shape prior of its config "
                         f"({type(exc).__name__})", run_dir,
                         hint="train the prior again with method: shape-ebm") from None
    for p in prior.parameters():
        p.requires_grad_(False)
    return prior.to(device).eval()
