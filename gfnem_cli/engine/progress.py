"""How a training run shows its progress: a live display in a terminal, plain lines elsewhere.

Both start with the run's header (`run_header.py`: run directory, device, parameters, the
family's data lines) and show the same figures (`live_figures.py`).

* Output to a file (a cluster job, `nohup`, `make demo > log`): a display would write nothing
  until the end, so a timestamped plain line is printed and flushed every `every` steps
  (`--log-every`; about 50 lines per run by default), one after every validation (with the best
  so far and the family's notes, e.g. an example tree), and any notice the moment it arises.
* A terminal: the first row is `train`, a bar, the step count, elapsed time and ETA. Only the
  bar yields to a narrow terminal, so the count and the ETA are never the part that is cut
  (rich's own columns cut those first). Below it the step's figures, then the last validation
  and the best one, which stay until the next validation, and a spinner while validating.
  Validation notes and notices print above the display and stay in the scrollback.
"""
from __future__ import annotations

import contextlib
import datetime
import sys
import time

from gfnem_cli.engine.live_figures import StepWindow, best_figure, validation_figures

STALL_INTERVALS = 5      # a notice after this many log intervals without a model update,
STALL_SHARE = 10         # and not before a tenth of the run (`--log-every 1` is not noisy)


def clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class _Display:
    """The terminal rows, rendered afresh at every refresh of the live display."""

    def __init__(self, owner: "TrainingProgress"):
        self.owner = owner

    def __rich_console__(self, console, options):
        from rich.text import Text

        o = self.owner
        eta = clock(o.eta()) if o.step > o.start else "-:--:--"     # no rate measured yet
        counts = f" {o.step}/{o.total} {clock(o.elapsed())} eta {eta}"
        label = "train "
        room = options.max_width - len(label) - len(counts)
        row = Text(label, style="bold")
        if room >= 2:
            done = int(room * min(max(o.step / max(o.total, 1), 0.0), 1.0))
            row.append("━" * done, style="bar.complete")
            row.append("━" * (room - done), style="bar.back")
        row.append(counts)
        row.truncate(options.max_width)
        yield row
        if o.live:
            yield Text(o.live)
        if o.validating is not None:
            spinner = o.spinner.render(time.monotonic())
            yield Text.assemble(spinner, f" validating at step {o.validating}…")
        elif o.last_validation:
            yield Text(o.last_validation)


class TrainingProgress:
    """A context manager: `advanced(step, metrics)` after each step, `validation(step)` around
    each validation and `validated(step, metrics, best, notes)` after it.

    `elapsed` is the run's time before this session (a resume continues it); the ETA is the
    rate of this session. `terminal` overrides the detection (tests); `console` is the rich
    console a terminal display draws on (default: one on `stream`)."""

    def __init__(self, total: int, start: int, enabled: bool, every: int = 0, stream=None,
                 header: list[str] | tuple = (), elapsed: float = 0.0, select_metric: str = "",
                 terminal: bool | None = None, console=None):
        from rich.console import Console

        self.total, self.start, self.step = total, start, start
        self.stream = stream or sys.stdout
        self.console = console or Console(file=self.stream, soft_wrap=False)
        terminal = self.console.is_terminal if terminal is None else terminal
        self.bar = enabled and terminal
        self.plain = enabled and not terminal
        self.every = every if every > 0 else max(1, total // 50)
        self.header, self.select_metric = list(header), select_metric
        self.window = StepWindow(self.every, max(STALL_INTERVALS * self.every,
                                                 total // STALL_SHARE), start)
        self._before, self._began = elapsed, time.perf_counter()
        self._live = None
        self.live = self.last_validation = ""
        self.validating: int | None = None
        if self.bar:
            from rich.spinner import Spinner

            self.spinner = Spinner("dots")

    # ------------------------------------------------------------------ clock
    def elapsed(self) -> float:
        return self._before + time.perf_counter() - self._began

    def eta(self) -> float:
        done = max(self.step - self.start, 1)
        return (time.perf_counter() - self._began) / done * (self.total - self.step)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "TrainingProgress":
        for line in self.header:
            self._say(line)
        if self.bar:
            from rich.live import Live

            self._live = Live(_Display(self), console=self.console, refresh_per_second=8)
            self._live.start()
        elif self.plain:
            self._line(f"train: from step {self.start} to {self.total}; a line every "
                       f"{self.every} steps and after each validation")
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ events
    def advanced(self, step: int, metrics: dict[str, float]) -> None:
        self.step = step
        notice = self.window.add(step, metrics)
        if not (self.bar or self.plain):
            return
        figures = " ".join(self.window.figures(metrics))
        if self.bar:
            self.live = figures
        elif step % self.every == 0 or step == self.total:
            self._line(f"step {step}/{self.total} ({100 * step / self.total:.0f}%) elapsed "
                       f"{clock(self.elapsed())} eta {clock(self.eta())} {figures}")
        if notice:
            self._say(notice)

    @contextlib.contextmanager
    def validation(self, step: int):
        """While the family validates: the spinner of the terminal display."""
        self.validating = step
        try:
            yield
        finally:
            self.validating = None

    def validated(self, step: int, metrics: dict[str, float], best: dict,
                  notes: list[str] | tuple = ()) -> None:
        """`best` is the trainer's record ({"value", "step", "metrics"}); `notes` lines the
        family asked to show with this validation."""
        shown = " ".join(validation_figures(metrics))
        top = best_figure(best, self.select_metric)
        if self.bar:
            self.last_validation = f"validation at step {step}: {shown}" + (
                f"; {top}" if top else "")
            for note in notes:
                self._say(f"step {step} validation {note}")
        elif self.plain:
            self._line(f"step {step} validation: {shown}" + (f" ({top})" if top else ""))
            for note in notes:
                self._line(f"step {step} validation {note}")

    # ------------------------------------------------------------------ output
    def _say(self, text: str) -> None:
        """A line outside the display: above it in a terminal, timestamped in a file."""
        if self.bar:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        elif self.plain:
            self._line(text)

    def _line(self, text: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {text}", file=self.stream, flush=True)
