"""Schedules of the EM loop: the adaptive M-step threshold, the E-loss moving average and
the model's learning rate.

GFlowNet-EM (Hu et al., ICML 2023, §3.3 "adaptive E-step") updates the latent model θ only
when the sampler tracks the current posterior well enough: an exponential moving average of
the E-step loss must lie below a threshold τ(g) that decays linearly with g, the number of
grammar (M-step) updates made so far. A loose threshold early lets θ move while the sampler
is still rough; a tight one later keeps the M-step honest. τ is on the *scale of the E-step
objective* (for trajectory balance: a mean squared log-ratio, in nats²), so thresholds do not
carry over between objectives.

The model's learning rate is a function of the same count g (`LearningRateSchedule`), so a
resumed run continues the schedule from its checkpointed update count with no state of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ThresholdSchedule:
    """τ(g) = τ_max + (τ_min − τ_max) · min(g / H, 1): linear from τ_max to τ_min over H updates.

    `horizon` H ≤ 0 means τ_min from the start. τ_max = +inf disables gating (M-step at every
    step); τ_min = τ_max = −inf never runs an M-step (E-step only, e.g. to pre-train a sampler).
    """
    tau_max: float
    tau_min: float
    horizon: int

    def __call__(self, grammar_updates: int) -> float:
        if self.horizon <= 0 or self.tau_max == self.tau_min:
            return self.tau_min
        frac = min(max(grammar_updates, 0) / self.horizon, 1.0)
        if math.isinf(self.tau_max) or math.isinf(self.tau_min):
            return self.tau_max if frac < 1.0 else self.tau_min
        return self.tau_max + (self.tau_min - self.tau_max) * frac


@dataclass
class MovingAverage:
    """ema ← decay · ema + (1 − decay) · value; the first value initialises it.

    `peek(value)` gives what the average would become without committing, so a training step
    can decide on the M-step and still leave the state untouched if it is later skipped.
    """
    decay: float = 0.9
    value: float | None = None

    def peek(self, x: float) -> float:
        if self.value is None:
            return float(x)
        return self.decay * self.value + (1.0 - self.decay) * float(x)

    def update(self, x: float) -> float:
        self.value = self.peek(x)
        return self.value

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.value = state["decay"], state["value"]


LR_DECAYS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class LearningRateSchedule:
    """lr(g) = base · w(g) · d(g): linear warm-up w over the first `warmup` model updates, then
    a decay d from 1 to `final` (a fraction of base) over the rest of `horizon` updates.

    "constant" is d = 1 (the warm-up still applies); "linear" and "cosine" (Loshchilov &
    Hutter 2017, without restarts) reach base · final at g = horizon and stay there."""
    base: float
    decay: str = "constant"
    warmup: int = 0
    horizon: int = 0
    final: float = 0.0

    def __call__(self, updates: int) -> float:
        g = max(int(updates), 0)
        scale = min((g + 1) / self.warmup, 1.0) if self.warmup > 0 else 1.0
        span = self.horizon - self.warmup
        if self.decay != "constant" and span > 0:
            frac = min(max(g - self.warmup, 0) / span, 1.0)
            shape = 1.0 - frac if self.decay == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
            scale *= self.final + (1.0 - self.final) * shape
        return self.base * scale

    def apply(self, optimizer, updates: int) -> float:
        """Set every parameter group of `optimizer` to lr(updates), the rate of the next step."""
        lr = self(updates)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
