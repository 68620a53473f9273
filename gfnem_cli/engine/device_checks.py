"""Invariant checks that never make a GPU wait.

`bool(tensor)` on a CUDA tensor stops the host until the device has caught up; a check of an
invariant inside a training step (lengths in range, teacher-forced trees well formed) would
then cost one wait each. `expect` raises the same `ValueError` with its message on the CPU,
where reading a tensor costs nothing, and on a GPU queues a device-side assertion instead
(`torch._assert_async`): a violation still stops the process, at the next kernel, with the
message but without the Python traceback. The checks it serves guard programming errors;
user input is validated before any step, with one-line errors.
"""
from __future__ import annotations

from typing import Callable

import torch


def expect(ok: torch.Tensor, message: str | Callable[[], str]) -> None:
    """Raise ValueError(message) unless every entry of `ok` is true (on a GPU: asynchronously).
    `message` may be a function, called only when the check fails."""
    if ok.device.type != "cpu":
        torch._assert_async(ok.all(), message if isinstance(message, str) else
                            "gfnem: a device-side invariant failed")
        return
    if not bool(ok.all()):
        raise ValueError(message() if callable(message) else message)
