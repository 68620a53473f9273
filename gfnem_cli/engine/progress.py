"""How a training run shows its progress: a live bar in a terminal, plain lines elsewhere.

In a terminal a rich progress bar carries the step count, elapsed time, ETA and the live
figures. When the output goes to a file (a cluster job, `nohup`, `make demo > log`) a bar
would write nothing until the end, so instead a timestamped plain line is printed and flushed
every `every` steps (about 50 lines per run by default) and after every validation.
"""
from __future__ import annotations

import datetime
import sys
import time


def live_figures(metrics: dict[str, float]) -> str:
    """The figures worth watching: the loss, the NLL per the family's unit (`nll_per_<unit>`,
    `nll_<unit>`) and perplexity, the same on validation, items per second, model updates."""
    keys = ["loss"]
    for prefix in ("", "val_"):
        keys += [k for k in metrics if k.startswith(prefix + "nll_") and not k.endswith(
            ("_is_bound", "_std_error", "_stderr"))] + [prefix + "ppl"]
    shown = [f"{key}={metrics[key]:.4g}" for key in keys + ["items_per_s"]
             if key in metrics and isinstance(metrics[key], (int, float))
             and not isinstance(metrics[key], bool)]
    if "model_updates" in metrics:
        shown.append(f"updates={int(metrics['model_updates'])}")
    return " ".join(shown)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class TrainingProgress:
    """A context manager: `advanced(step, metrics)` after each step, `validated(step,
    metrics)` after each validation."""

    def __init__(self, total: int, start: int, enabled: bool, every: int = 0, stream=None):
        from rich.console import Console

        self.total, self.start = total, start
        self.stream = stream or sys.stdout
        terminal = Console(file=self.stream).is_terminal
        self.bar = enabled and terminal
        self.plain = enabled and not terminal
        self.every = every if every > 0 else max(1, total // 50)
        self._began = time.perf_counter()
        self._progress = self._task = None
        self._validation: dict[str, float] = {}     # kept on the bar until the next one

    def __enter__(self) -> "TrainingProgress":
        if self.bar:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn("[bold]train"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TimeRemainingColumn(), TextColumn("{task.fields[live]}"))
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total,
                                                 completed=self.start, live="")
        elif self.plain:
            self._line(f"train: from step {self.start} to {self.total}")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advanced(self, step: int, metrics: dict[str, float]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step,
                                  live=live_figures({**metrics, **self._validation}))
        elif self.plain and (step % self.every == 0 or step == self.total):
            spent = time.perf_counter() - self._began
            done = max(step - self.start, 1)
            eta = spent / done * (self.total - step)
            self._line(f"step {step}/{self.total} ({100 * step / self.total:.0f}%) elapsed "
                       f"{_clock(spent)} eta {_clock(eta)} {live_figures(metrics)}")

    def validated(self, step: int, metrics: dict[str, float], best: dict[str, float]) -> None:
        self._validation = {k: v for k, v in metrics.items() if k.startswith("val_")}
        if self._progress is not None:
            self._progress.update(self._task, live=live_figures({**metrics, **best}))
        elif self.plain:
            self._line(f"step {step} validation: {live_figures(metrics)}")

    def _line(self, text: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {text}", file=self.stream, flush=True)
