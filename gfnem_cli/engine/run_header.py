"""The lines a training run opens with: where it runs, how big it is, on what data.

A job's log is often all a user has of it (a cluster job, `nohup`), and the first questions
about a run — did it get the GPU, is the model the size I meant, did it find the data I
meant, is this the run directory I think — should be answered by its first lines, before any
step. The engine gives what every run has (run directory, new or resumed, device and library
versions, method, parameter counts per module); the family gives its own data lines through
`launch(..., describe=[...])` (corpus sizes and vocabulary for grammars, image counts and shape
for images), since the engine speaks neither of sentences nor of images.
"""
from __future__ import annotations

from pathlib import Path

import torch


def parameter_counts(method) -> dict[str, int]:
    """Parameters per module of a trainer `Method`: its `modules` mapping (the EM loop's and
    the image baselines'), else its `model`; shared parameters are counted once."""
    modules = getattr(method, "modules", None)
    if not isinstance(modules, dict):
        model = getattr(method, "model", None)
        modules = {"model": model} if isinstance(model, torch.nn.Module) else {}
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for name, module in modules.items():
        if not isinstance(module, torch.nn.Module):
            continue
        fresh = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        counts[name] = sum(p.numel() for p in fresh)
    return counts


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return (f"device: {device} ({torch.cuda.get_device_name(index)}; torch "
                f"{torch.__version__}, CUDA {torch.version.cuda})")
    threads = torch.get_num_threads()
    return (f"device: {device} (torch {torch.__version__}, {threads} CPU "
            f"thread{'s' if threads != 1 else ''})")


def header_lines(run_dir: Path, device: torch.device, method, config: dict,
                 describe: list[str] | tuple, resumed_from: int | None, steps: int) -> list[str]:
    """The header, one fact a line: run, device, method, parameters, then the family's."""
    how = "new run" if resumed_from is None else f"resumed at step {resumed_from:,}"
    lines = [f"run: {run_dir} ({how}; train.steps {steps:,})", device_line(device)]
    if isinstance(config.get("method"), str):
        lines.append(f"method: {config['method']}")
    counts = parameter_counts(method)
    if counts:
        parts = ", ".join(f"{name} {count:,}" for name, count in counts.items())
        total = f" ({sum(counts.values()):,} in all)" if len(counts) > 1 else ""
        lines.append(f"parameters: {parts}{total}")
    return lines + list(describe)
