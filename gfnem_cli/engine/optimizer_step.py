"""The checked optimizer step every method uses (both families, the EM loop, the baselines).

A loss is checked finite before its backward pass, gradients are clipped and their norm
checked finite, and only then does the optimizer step (`checked_step`, or its parts
`check_finite` and `checked_clip` where one step combines several losses, as the EM loop
does). Any failure raises `NonFiniteLoss` with the gradients cleared and no parameter or
optimizer state changed. Under data parallelism the checks are agreed over ranks and the
gradients summed over them here, before the norm (`distributed.py`).
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


def check_finite(value: torch.Tensor, params=()) -> None:
    """Raise `NonFiniteLoss` (gradients of `params` cleared) unless every entry is finite.

    Under data parallelism this check waits for the gradient norm instead: a non-finite loss
    on any rank makes its gradients non-finite, so the summed gradients' norm in
    `checked_clip` is non-finite on every rank and all ranks skip the step together, without
    a collective per loss."""
    if distributed.world().active:
        return
    if not bool(torch.isfinite(value.detach()).all()):
        clear_grads(params)
        raise NonFiniteLoss


def checked_clip(params, max_norm: float, clear=()) -> float:
    """Clip the gradients of `params` to norm `max_norm` (<= 0 or inf: no clipping) and return
    their norm; a non-finite norm clears the gradients of `clear` and raises `NonFiniteLoss`.
    Under data parallelism the gradients are first summed over ranks (`distributed`), so the
    norm, the clipping and the step are those of the global batch."""
    params = list(params)
    distributed.reduce_gradients(params)
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    limit = max_norm if max_norm > 0 else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(with_grad, limit))
    if not math.isfinite(norm):
        clear_grads(clear)
        raise NonFiniteLoss
    return norm


def checked_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params,
                 max_norm: float) -> float:
    """finite loss -> backward -> clip -> finite norm -> step; returns the gradient norm."""
    params = list(params)
    check_finite(loss, params)
    clear_grads(params)
    loss.backward()
    norm = checked_clip(params, max_norm, clear=params)
    optimizer.step()
    return norm
