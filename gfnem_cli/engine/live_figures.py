"""What a training run's progress shows besides the step count: the figures worth watching.

One step's metrics are noisy and say nothing about a trend, so beside them the display keeps a
window of the last `window` steps (the `--log-every` interval, about 2% of the run by default,
and at least `MIN_WINDOW` steps: a share of one step says nothing):

* `loss_avg`, the mean loss over the window: the smoothed loss, the one that visibly moves;
* for EM methods, whose steps carry `tau`, `e_loss_gate` and `mstep` (`engine/em.py`): `tau`
  (the M-step threshold now), `gate` (the moving average of the E-loss the M-step is gated
  on) and `updated k/n`, how many of the last n steps updated the model. Together they say
  why a model is or is not learning: the model moves only while the gate is below tau;
* a notice when the model has not been updated for `stall_after` steps while the gate holds
  it back, repeated at twice the length each time the stall goes on (a long stall is then a
  few lines, not one per interval). Alternating phases (`em.alternate_every`) keep the gate
  open (tau = inf), so their E phases are never reported as stalls.

Validation figures are every number a validation returns (`val_*`; flags and standard errors
left out, which metrics.jsonl keeps), in the order the family gives them.
"""
from __future__ import annotations

import math
from collections import deque

NOT_SHOWN = ("_is_bound", "_std_error", "_stderr")
MIN_WINDOW = 10


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def figure(key: str, value: float) -> str:
    return f"{key}={value:.4g}"


def step_figures(metrics: dict[str, float]) -> list[str]:
    """The loss, the NLL per the family's unit (`nll_per_<unit>`, `nll_<unit>`) and perplexity,
    items per second, and the model updates so far."""
    keys = ["loss"] + [k for k in metrics if k.startswith("nll_") and not k.endswith(NOT_SHOWN)]
    keys += ["ppl", "items_per_s"]
    shown = [figure(key, metrics[key]) for key in keys if _number(metrics.get(key))]
    if _number(metrics.get("model_updates")):
        shown.append(f"updates={int(metrics['model_updates'])}")
    return shown


def validation_figures(metrics: dict[str, float]) -> list[str]:
    """Every number of a validation, in the family's order (its selection metric first)."""
    return [figure(k, v) for k, v in metrics.items()
            if k.startswith("val_") and not k.endswith(NOT_SHOWN) and _number(v)]


def best_figure(best: dict, select_metric: str) -> str:
    """`best val_nll_per_token=3.05 at step 300`, or "" before any validation selected."""
    value = best.get("metrics", {}).get(select_metric) if select_metric else None
    if best.get("step") is None or not _number(value):
        return ""
    return f"best {figure(select_metric, value)} at step {best['step']}"


class StepWindow:
    """The last `window` steps' losses and M-step flags, and the stall watch."""

    def __init__(self, window: int, stall_after: int, start_step: int):
        self.window = max(int(window), MIN_WINDOW)
        self.losses: deque[float] = deque(maxlen=self.window)
        self.msteps: deque[bool] = deque(maxlen=self.window)
        self.stall_after = max(int(stall_after), 1)
        self._updates: int | None = None
        self._last_update = start_step       # a resumed run's history is not known here
        self._next_notice = self.stall_after

    def add(self, step: int, metrics: dict[str, float]) -> str | None:
        """Record a step; returns a notice when the model has stalled long enough to say so."""
        loss = metrics.get("loss")
        if _number(loss) and math.isfinite(loss):
            self.losses.append(float(loss))
        if _number(metrics.get("mstep")):
            self.msteps.append(bool(metrics["mstep"]))
        if not _number(metrics.get("model_updates")):
            return None
        updates = int(metrics["model_updates"])
        if self._updates is not None and updates > self._updates:
            self._last_update, self._next_notice = step, self.stall_after
        self._updates = updates
        idle = step - self._last_update
        tau, gate = metrics.get("tau"), metrics.get("e_loss_gate")
        gated = _number(tau) and _number(gate)
        if idle < self._next_notice or (gated and gate < tau):
            return None
        self._next_notice *= 2
        why = (f": the E-loss gate {gate:.4g} is not below tau {tau:.4g}, so M-steps wait for "
               "the E-step to catch up" if gated else "")
        return f"notice: the model has not been updated for {idle} steps (step {step}){why}"

    def figures(self, metrics: dict[str, float]) -> list[str]:
        """One step's figures with the window's: the smoothed loss and, for EM, the gate."""
        shown = step_figures(metrics)
        if len(self.losses) > 1:         # over one step it would repeat the loss
            shown.insert(1 if _number(metrics.get("loss")) else 0,
                         figure("loss_avg", sum(self.losses) / len(self.losses)))
        em = [figure(name, metrics[key]) for name, key in (("tau", "tau"), ("gate", "e_loss_gate"))
              if _number(metrics.get(key))]
        if self.msteps:
            em.append(f"updated {sum(self.msteps)}/{len(self.msteps)}")
        return shown + em
