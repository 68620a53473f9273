"""How the networks compute (`train.precision`, `train.deterministic`), for the first GPU.

* `bf16`: the *networks* a family names (the sampler's encoder and heads, a VAE's decoder and
  encoders) run under `torch.autocast` in bfloat16 and hand float32 back, so every
  log-probability, reward, objective and the inside algorithm, which run after them, stay in
  float32/float64 as they do today. Autocast is entered by a forward pre-hook and left by a
  forward hook that also runs when the forward raises (`always_call`), so a NaN check that
  stops a step never leaves autocast on. `float32` (the default) changes nothing.
* `compile: true` compiles the same networks with `torch.compile` (dynamic shapes: sentence
  lengths and batch sizes vary). Compiling takes minutes on a CPU, and pays on a GPU.
* `deterministic: true` asks torch for deterministic kernels everywhere (and cuBLAS for its
  fixed workspace) so that a CUDA run repeats bit for bit, at some speed; a CPU run is
  deterministic already (the fault-injection tests resume bit-exactly), so this is for GPUs.

Checkpoints hold float32 parameters either way: autocast casts inside the forward only.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import torch

PRECISIONS = ("float32", "bf16")


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    return value


class _Autocast:
    """The pair of hooks of one module: enter autocast before its forward, leave it after."""

    def __init__(self, device_type: str):
        self.device_type, self.active, self.calls = device_type, [], 0

    def enter(self, module, args):
        self.calls += 1
        context = torch.autocast(self.device_type, dtype=torch.bfloat16)
        context.__enter__()
        self.active.append(context)

    def leave(self, module, args, output):
        self.active.pop().__exit__(None, None, None)
        return _to_float32(output)


def use_precision(precision: str, device: torch.device,
                  networks: Iterable[torch.nn.Module]) -> list[_Autocast]:
    """Apply `precision` to the forward passes of `networks` (modules that are *called*: a
    family names the children of a module whose other methods do the work); the hooks, whose
    `calls` count the forwards they wrapped (none for float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    if precision == "float32":
        return []
    hooks = []
    for module in networks:
        hook = _Autocast(device.type)
        module.register_forward_pre_hook(hook.enter)
        module.register_forward_hook(hook.leave, always_call=True)
        hooks.append(hook)
    return hooks


def use_deterministic(on: bool) -> None:
    """Deterministic kernels for the whole process (before the first CUDA call)."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def use_compile(on: bool, networks: Iterable[torch.nn.Module]) -> int:
    """torch.compile each network in place (after `use_precision`, so its hooks are inside)."""
    if not on:
        return 0
    count = 0
    for module in networks:
        module.compile(dynamic=True)
        count += 1
    return count
