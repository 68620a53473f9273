"""Host-to-device copies of batches: on a GPU, from pinned memory and without waiting.

The trainer moves each batch once, before the step (`Trainer`, `device`); a method's own
`.to(device)` of the batch's tensors is then a no-op. The copy is queued on the stream, so the
step's first kernels wait for it instead of the host.
"""
from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
