"""The checked optimizer step every method uses (both families, the EM loop, the baselines).

Gradients are clipped (`clip_norm`), then the losses and norms are checked finite and the
step's logged figures read in one wait for the device (`settle`), and only then does the
optimizer step (`checked_step`, or those parts where one step combines several losses, as
the EM loop does). Any failure raises `NonFiniteLoss` with the gradients cleared and no
parameter or optimizer state changed. Under data parallelism the checks are agreed over
ranks and the gradients summed over them here, before the norm (`distributed.py`).
"""
from __future__ import annotations

import math

import torch

from gfnem_cli.engine import distributed


class NonFiniteLoss(Exception):
    """Raised by a method before any optimizer step when a loss is NaN or infinite."""


def clear_grads(params) -> None:
    for p in params:
        p.grad = None


def clip_norm(params, max_norm: float) -> torch.Tensor | None:
    """Clip the gradients of `params` to norm `max_norm` (<= 0 or inf: no clipping) and return
    their norm as a device scalar (None when none has a gradient), without waiting for it.
    Under data parallelism the gradients are first summed over ranks (`distributed`), so the
    norm, the clipping and the step are those of the global batch."""
    params = list(params)
    distributed.reduce_gradients(params)
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return None
    limit = max_norm if max_norm > 0 else math.inf
    return torch.nn.utils.clip_grad_norm_(with_grad, limit).detach()


def settle(losses, norms, metrics: dict, clear=()) -> dict[str, float]:
    """The step's one wait for the device, before any optimizer steps: are the `losses` and
    gradient `norms` finite, and what are the `metrics` (their tensors become floats)? A
    non-finite one clears the gradients of `clear` and raises `NonFiniteLoss`. Under data
    parallelism only the norms count: a non-finite loss on any rank makes the summed
    gradients' norm non-finite on every rank, so all ranks skip the step together, without a
    collective per loss. None entries are ignored."""
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    checks = [] if distributed.world().active else [x for x in losses if x is not None]
    checks += [x for x in norms if x is not None]
    values = [metrics[k].detach().double().reshape(()) for k in keys]
    flags = [torch.isfinite(x.detach()).all().double() for x in checks]
    parts = values + flags
    host = (torch.stack([x.to(parts[0].device) for x in parts]).tolist() if parts else [])
    if not all(host[len(values):]):
        clear_grads(clear)
        raise NonFiniteLoss
    return {**metrics, **dict(zip(keys, host[:len(values)]))}


def checked_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params,
                 max_norm: float) -> float:
    """backward -> clip -> finite loss and norm (one wait) -> step; returns the gradient norm."""
    params = list(params)
    clear_grads(params)
    loss.backward()
    norm = clip_norm(params, max_norm)
    figures = settle([loss], [norm], {"norm": norm if norm is not None else 0.0},
                     clear=params)
    optimizer.step()
    return figures["norm"]
