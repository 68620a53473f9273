"""One checked optimizer step: a NaN or infinite loss or gradient norm never reaches a parameter.

The trainer's policy (`gfnem_cli.engine.trainer.NonFiniteLoss`): a bad step raises before any
optimizer step, with every gradient cleared, so parameters and optimizer state are exactly as
they were and the trainer can skip the batch. Issue 11 moves one shared step into the engine;
every baseline imports `checked_step` from this module only, so adopting the engine's is a
change of this one file (a re-export, or a shim if its signature differs).

The loss and the gradient norm are checked together after `backward` and clipping, in the
single host sync of the step, which also carries the step's reported figures back: a
non-finite loss gives a non-finite gradient anyway, and the wasted backward pass is paid only
on a skipped step, where a separate early check would cost every step a second sync.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from gfnem_cli.engine.trainer import NonFiniteLoss


def clear_grads(parameters: Iterable[torch.nn.Parameter]) -> None:
    for p in parameters:
        p.grad = None


def checked_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 parameters: Iterable[torch.nn.Parameter], max_norm: float = 0.0,
                 report: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """backward → clip to `max_norm` (0 = no clipping) → check → step.

    `parameters` are all that the loss may reach (their gradients are cleared first and on
    failure); `report` holds scalar tensors to bring back as floats in the same host sync.
    Returns {"loss", "grad_norm", *report}; raises NonFiniteLoss with nothing changed.
    """
    params = list(parameters)
    clear_grads(params)
    loss.backward()
    limit = max_norm if max_norm and max_norm > 0 else math.inf
    with_grad = [p for p in params if p.grad is not None]
    if with_grad:
        norm = torch.nn.utils.clip_grad_norm_(with_grad, limit)
    else:
        norm = torch.zeros((), device=loss.device)
    report = report or {}
    values = [loss.detach(), norm.detach()] + [v.detach() for v in report.values()]
    flat = torch.stack([v.reshape(()).to(torch.float64) for v in values]).tolist()  # the sync
    if not (math.isfinite(flat[0]) and math.isfinite(flat[1])):
        clear_grads(params)
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss
    optimizer.step()
    return {"loss": flat[0], "grad_norm": flat[1], **dict(zip(report, flat[2:]))}
