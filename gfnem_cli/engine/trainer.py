"""The training loop every method shares: progress, metrics, checkpoints, resume, interruption.

A family supplies a `Method` (one optimisation step on a batch, validation, its state) and a
deterministic batch schedule (the batches of epoch e are a function of the seed and e alone).
The trainer owns everything else, so exact resume, atomic checkpoints, Ctrl-C handling and the
non-finite-loss policy behave identically for grammars and images.

A method steps its optimizers through `optimizer_step.py` (a NaN loss raises `NonFiniteLoss`,
which the loop counts and skips).
"""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from gfnem_cli.engine import checkpoint as ckpt
from gfnem_cli.engine import distributed, row_noise
from gfnem_cli.engine.optimizer_step import NonFiniteLoss
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.files import os_error, write_text_atomic
from gfnem_cli.engine.progress import TrainingProgress
from gfnem_cli.engine.scalar_logs import open_logger


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the step finished, a checkpoint was written, the run can resume."""

    def __init__(self, step: int, path: Path):
        self.step, self.path = step, path
        super().__init__(f"interrupted at step {step}; checkpoint saved to {path}")


VALIDATION_NOTES = "notes"     # a validation's lines of text to show, not figures to log


class Method(Protocol):
    """`model_updates` (optional attribute): optimizer steps taken on the model's parameters θ
    so far; an EM method skips the M-step on some batches, so it can be fewer than the steps.
    Without it, every finite step counts as one update. `updated` (optional): what those
    updates update, for the report's "N ... updates" ("prior"; default the family's model).
    `modules` (optional, name -> module) is what the run's header counts parameters of
    (`run_header.py`).

    `validate` returns figures; under `VALIDATION_NOTES` it may add lines of text for the
    progress display (an example parse), which are shown and not logged."""

    def train_step(self, batch: Any) -> dict[str, float]: ...
    def validate(self) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BatchSchedule(Protocol):
    def epoch_batches(self, epoch: int) -> list[Any]: ...


@dataclass
class TrainerOptions:
    steps: int
    max_model_updates: int = 0      # also stop after this many updates of θ (0 = no cap)
    eval_every: int = 500
    checkpoint_every: int = 200
    select_metric: str = ""        # the validation metric best.pt is chosen by, named by
                                   # the family ("" = none: no best.pt)
    select_maximize: bool = False  # higher is better (an F1), else lower (an NLL)
    max_nonfinite_in_a_row: int = 20
    show_progress: bool = True
    log_every: int = 0              # plain-line progress when not a terminal (and the window
                                    # of the smoothed figures); 0 = ~50 lines per run


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a polite request; a second one aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, run_dir: Path, method: Method, schedule: BatchSchedule,
                 options: TrainerOptions, config: dict, data_fingerprint: str,
                 items_in=lambda batch: 1, device=None):
        self.run_dir = Path(run_dir)
        self.method, self.schedule, self.options = method, schedule, options
        self.config, self.fingerprint = config, data_fingerprint
        self.items_in = items_in
        # on a GPU each batch goes over once, before its step (`transfer.py`)
        self.device = device if device is not None and torch.device(device).type == "cuda" \
            else None
        self.last_path = self.run_dir / "checkpoints" / "last.pt"
        self._loaded_from = self.last_path       # or previous.pt, after a fallback
        self.best_path = self.run_dir / "checkpoints" / "best.pt"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.step = self.epoch = self.position = 0
        worst = -math.inf if options.select_maximize else math.inf
        self.best: dict[str, Any] = {"value": worst, "step": None, "metrics": {}}
        self.nonfinite_total = 0
        self.elapsed = 0.0                       # seconds inside training steps (the report's)
        self.wall_elapsed = 0.0                  # wall seconds of the run before this session
        self._session_began: float | None = None
        self.header: list[str] = []              # the run's opening lines (`runs.launch`)
        self.last_train: dict[str, float] = {}   # the last finite step's metrics, for the report
        self.scalar_log = None                   # train.logger's second view of the log
        self.world = distributed.world()         # rank 0 alone writes and shows progress
        self._rank_rngs: list | None = None      # every rank's generators at a checkpoint

    # ---------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT_VERSION, "step": self.step, "epoch": self.epoch,
            "position": self.position, "method": self.method.state_dict(),
            "rng": ckpt.capture_rng(), "rng_ranks": self._rank_rngs, "config": self.config,
            "data_fingerprint": self.fingerprint, "best": self.best,
            "nonfinite_total": self.nonfinite_total, "elapsed": self.elapsed,
            "wall_elapsed": self.elapsed_s(), "last_train": self.last_train,
        }

    def save(self) -> None:
        """last.pt, checksummed and read back before it replaces the old one, which is kept
        as previous.pt (the fallback of `--resume` when last.pt is damaged)."""
        ckpt.save_atomic(self._state(), self.last_path, keep_previous=ckpt.previous_of(
            self.last_path))

    def load_checkpoint(self, on_warning=None) -> dict[str, Any]:
        """Read and check the newest intact checkpoint without writing anything (a refused
        resume must leave the run as it was); `restore` then applies it. A damaged or missing
        last.pt falls back to previous.pt with a one-line warning (`checkpoint.load_newest`)."""
        path, state = ckpt.load_newest(self.last_path, on_warning)
        self._loaded_from = path
        if state.get("data_fingerprint") != self.fingerprint:
            raise GfnemError("this checkpoint was trained on another data set "
                             f"(fingerprint {str(state.get('data_fingerprint'))[:19]}, data has "
                             f"{self.fingerprint[:19]})", path,
                             hint="resume with the corpus the run was started on")
        if state["step"] > self.options.steps:
            raise GfnemError(f"the run is already at step {state['step']}, past "
                             f"train.steps={self.options.steps}", path,
                             hint="raise train.steps to continue it")
        return state

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.method.load_state_dict(state["method"])
            self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
            self.best, self.nonfinite_total = state["best"], state["nonfinite_total"]
            self._restore_rank_rng(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise GfnemError(f"checkpoint does not fit this run ({type(exc).__name__})",
                             self._loaded_from,
                             hint="restore it, or start a new run") from None
        self.elapsed = state.get("elapsed", 0.0)
        # checkpoints older than the wall clock have the step time, a lower bound of it
        self.wall_elapsed = state.get("wall_elapsed", self.elapsed)
        self.last_train = state.get("last_train", {})

    def _restore_rank_rng(self, state: dict[str, Any]) -> None:
        """Each rank continues its own generators; under another world size (or from a
        one-process checkpoint) rank r > 0 starts fresh ones from its seed and the step."""
        ranks = state.get("rng_ranks")
        if self.world.active and ranks and len(ranks) == self.world.size:
            ckpt.restore_rng(ranks[self.world.rank])
        elif self.world.rank > 0:
            ckpt.seed_everything(distributed.rank_seed(
                int(self.config.get("train", {}).get("seed", 0)) + state["step"]))
        else:
            ckpt.restore_rng(state["rng"])

    def _checkpoint(self) -> None:
        """Every rank hands its generators to rank 0, which writes last.pt, once every rank's
        method state is checked to be the same (`distributed.first_divergence`)."""
        self._rank_rngs = (distributed.gather_objects(ckpt.capture_rng())
                           if self.world.active else None)
        diverged = distributed.first_divergence(self.method.state_dict())
        if diverged is not None:
            raise GfnemError(f"the data-parallel ranks diverged by step {self.step}: "
                             f"{diverged} differs", self.last_path,
                             hint="this is a bug in gfnem; please report it with the recipe; "
                                  "the last checkpoint is intact")
        if self.world.is_main:
            self.save()

    def resume(self) -> None:
        """Load, check and apply the last checkpoint, and trim the log to it."""
        self.restore(self.load_checkpoint())
        self.start_metrics(resumed=True)

    def start_metrics(self, resumed: bool, logger: str = "none") -> None:
        """A fresh start replaces any old log (a run killed before its first checkpoint left
        one); a resume drops the lines of steps after the checkpoint, which will run again.
        `logger` (train.logger, `scalar_logs`) then opens, following the same rule."""
        kept, records = [], []
        if not self.world.is_main:
            return
        if not resumed:
            write_text_atomic(self.metrics_path, "")
        elif self.metrics_path.exists():
            text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line torn by a kill in mid-write
                    continue
                step = record.get("step") if isinstance(record, dict) else None
                if isinstance(step, int) and not isinstance(step, bool) and step <= self.step:
                    kept.append(line)
                    records.append(record)
            write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))
        self.scalar_log = open_logger(logger, self.run_dir, self.step, resumed, records)

    # ---------------------------------------------------------------- logging
    def elapsed_s(self) -> float:
        """Wall seconds since the run began, over every session, validations and checkpoints
        included (report.json's `train_seconds` counts the steps alone): a resume continues
        from the checkpoint's figure, so `elapsed_s` never goes back in a resumed log."""
        if self._session_began is None:
            return self.wall_elapsed
        return self.wall_elapsed + time.perf_counter() - self._session_began

    def _log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        record = {"time": round(time.time(), 3), "elapsed_s": round(self.elapsed_s(), 3),
                  **{k: _finite_or_none(v) for k, v in record.items()}}
        try:
            with self.metrics_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as exc:
            raise os_error(exc, self.metrics_path) from None
        if self.scalar_log is not None:
            self.scalar_log.log(record)

    def _validate(self) -> tuple[dict[str, float], list[str]]:
        metrics = dict(self.method.validate())
        notes = [str(line) for line in metrics.pop(VALIDATION_NOTES, None) or ()]
        value = metrics.get(self.options.select_metric) if self.options.select_metric else None
        self._log({"kind": "eval", "step": self.step, **metrics})
        better = (value is not None and math.isfinite(value)
                  and (value > self.best["value"] if self.options.select_maximize
                       else value < self.best["value"]))
        if better:
            self.best = {"value": value, "step": self.step, "metrics": metrics}
            ckpt.save_atomic({"format": ckpt.FORMAT_VERSION, "step": self.step,
                              "method": self.method.state_dict(), "config": self.config,
                              "data_fingerprint": self.fingerprint, "metrics": metrics},
                             self.best_path)
        return metrics, notes

    # ---------------------------------------------------------------- loop
    def model_updates(self) -> int:
        updates = getattr(self.method, "model_updates", None)
        return int(updates) if updates is not None else self.step - self.nonfinite_total

    def _finished(self) -> bool:
        cap = self.options.max_model_updates
        return self.step >= self.options.steps or (cap > 0 and self.model_updates() >= cap)

    def _batches(self):
        """Yield (epoch, position, batch) from the saved position onwards, forever."""
        while True:
            batches = self.schedule.epoch_batches(self.epoch)
            if not batches:
                raise GfnemError("the training split yields no batches",
                                 hint="check the length cap and the corpus")
            while self.position < len(batches):
                yield batches[self.position]
            self.epoch, self.position = self.epoch + 1, 0

    def fit(self) -> dict[str, Any]:
        opts = self.options
        last_metrics = self.last_train
        self._session_began = time.perf_counter()
        progress = TrainingProgress(opts.steps, self.step,
                                    opts.show_progress and self.world.is_main, opts.log_every,
                                    header=self.header, elapsed=self.wall_elapsed,
                                    select_metric=opts.select_metric)
        stream = self._batches()
        try:
            return self._fit(opts, progress, stream, last_metrics)
        finally:
            self.wall_elapsed, self._session_began = self.elapsed_s(), None
            if self.scalar_log is not None:    # flushed whichever way the loop ends
                self.scalar_log.close()
                self.scalar_log = None

    def _fit(self, opts: TrainerOptions, progress: TrainingProgress, stream,
             last_metrics: dict[str, Any]) -> dict[str, Any]:
        in_a_row = 0
        items, window_start = 0, time.perf_counter()
        with _StopFlag() as stop, progress:
            while not self._finished():
                batch = next(stream)
                started = time.perf_counter()
                try:
                    local = distributed.shard(batch)
                    if self.device is not None:
                        local = local.to(self.device)
                    with row_noise.training_step(self.step, distributed.first_row()):
                        metrics = self.method.train_step(local)
                    in_a_row = 0
                except NonFiniteLoss:
                    metrics = None
                    in_a_row += 1
                    self.nonfinite_total += 1
                metrics, stop_agreed = distributed.agree_on_step(metrics, stop.requested)
                self.position += 1
                self.step += 1
                self.elapsed += time.perf_counter() - started
                if metrics is None:
                    if in_a_row >= opts.max_nonfinite_in_a_row:
                        raise GfnemError(
                            f"training diverged: {in_a_row} non-finite losses in a row at "
                            f"step {self.step}", self.last_path,
                            hint="the last good checkpoint is intact; lower the learning rate")
                else:
                    items += self.items_in(batch)
                    now = time.perf_counter()
                    rate = items / max(now - window_start, 1e-9)
                    last_metrics = self.last_train = {**metrics, "items_per_s": rate}
                    self._log({"kind": "train", "step": self.step, "epoch": self.epoch,
                               **last_metrics})
                    progress.advanced(self.step, last_metrics)
                finished = self._finished()
                if (self.step % opts.eval_every == 0 or finished) and self.world.is_main:
                    with progress.validation(self.step):
                        figures, notes = self._validate()
                    progress.validated(self.step, figures, self.best, notes)
                # never overwrite the last good checkpoint during a run of bad steps; a skipped
                # step changes no parameter, so the state at the end is always good to keep
                if finished or (in_a_row == 0 and self.step % opts.checkpoint_every == 0):
                    self._checkpoint()
                # one process reads the flag now; ranks act on the request they agreed on
                if (stop_agreed if self.world.active else stop.requested) and not finished:
                    self._checkpoint()
                    raise TrainingInterrupted(self.step, self.last_path)
        report = {"steps": self.step, "model_updates": self.model_updates(),
                  "updated": getattr(self.method, "updated", None),
                  "epochs_started": self.epoch + 1,
                  "train_seconds": round(self.elapsed, 2), "best_step": self.best["step"],
                  "select_metric": opts.select_metric or None,
                  "best": self.best["metrics"], "last_train": last_metrics,
                  "nonfinite_steps_skipped": self.nonfinite_total,
                  "ended_on_nonfinite_steps": in_a_row}
        if self.world.is_main:
            write_text_atomic(self.run_dir / "report.json",
                              json.dumps(_finite_or_none(report), indent=2, allow_nan=False)
                              + "\n")
        return report


def _finite_or_none(value):
    """Strict JSON has no NaN or Infinity: a non-finite figure is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
