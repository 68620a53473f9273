"""Where a training run also sends its scalars (`train.logger`): nowhere, or TensorBoard.

`metrics.jsonl` stays the run's record; a logger is a second view of the very same records,
for the tools researchers already watch. With `tensorboard` every numeric field of every
`train` and `eval` record goes to RUN/tensorboard/ as the scalar `<kind>/<field>` at the
record's step and wall time (`train/loss`, `eval/val_nll_per_token`); a field that is not a
number (a flag, a name, a non-finite figure written as null) is not a scalar and is left out.

The logger follows the log's own lifecycle (`Trainer.start_metrics`):

* `check_logger` runs in `runs.begin`, before anything is written: a missing package refuses
  the run in one line that says what to install, instead of a traceback after the first step.
* A fresh start replaces `metrics.jsonl`, so it also removes the event files an earlier,
  killed attempt left (the folder itself and anything else in it are kept).
* A resume drops the log's lines after the checkpoint, which will run again; the new event
  file starts with TensorBoard's purge marker at the next step (`SummaryWriter(purge_step)`),
  so readers hide the superseded scalars and the curves continue without a fork. A logger
  turned on at a resume (`train.logger` may change then) first replays the kept records.

wandb is not offered yet: a choice here is a promise that the run writes it.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Iterable

from gfnem_cli.engine.errors import GfnemError

LOGGERS = ("none", "tensorboard")
TENSORBOARD_DIR = "tensorboard"
EVENT_FILE_PREFIX = "events.out.tfevents."
NOT_SCALARS = ("time", "kind", "step")       # the record's place, not a figure


def check_logger(name: str) -> None:
    """Refuse (before any write) a logger whose package cannot be imported."""
    if name not in LOGGERS:
        raise GfnemError(f"unknown train.logger {name!r}", hint="use " + " or ".join(LOGGERS))
    if name == "tensorboard":
        try:
            importlib.import_module("tensorboard")
            importlib.import_module("torch.utils.tensorboard")
        except Exception as exc:  # noqa: BLE001 - missing, or an install that cannot load
            raise GfnemError(f"train.logger: tensorboard needs the tensorboard package, which "
                             f"cannot be imported ({type(exc).__name__})",
                             hint="pip install tensorboard (or pip install -e '.[tensorboard]'),"
                                  " or set train.logger: none") from None


def scalars_of(record: dict[str, Any]) -> Iterable[tuple[str, float]]:
    """(tag, value) of every numeric field of a metrics.jsonl record."""
    kind = record.get("kind", "train")
    for key, value in record.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        yield f"{kind}/{key}", float(value)


class TensorBoardLog:
    """RUN/tensorboard/ through torch's SummaryWriter."""

    def __init__(self, run_dir: Path, step: int, resumed: bool, kept: list[dict[str, Any]]):
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(run_dir) / TENSORBOARD_DIR
        earlier = sorted(folder.glob(EVENT_FILE_PREFIX + "*")) if folder.is_dir() else []
        if not resumed:
            for stale in earlier:
                stale.unlink(missing_ok=True)
        self.writer = SummaryWriter(log_dir=str(folder),
                                    purge_step=step + 1 if resumed and earlier else None)
        if resumed and not earlier:       # turned on at this resume: the history first
            for record in kept:
                self.log(record)

    def log(self, record: dict[str, Any]) -> None:
        step, walltime = int(record.get("step", 0)), record.get("time")
        for tag, value in scalars_of(record):
            self.writer.add_scalar(tag, value, step, walltime=walltime)
        if record.get("kind") == "eval":
            self.writer.flush()           # a kill loses at most the steps since a validation

    def close(self) -> None:
        self.writer.close()


def open_logger(name: str, run_dir: Path, step: int, resumed: bool,
                kept: list[dict[str, Any]]) -> TensorBoardLog | None:
    """The logger `train.logger` names (None for `none`), opened after the run's files are
    written; `kept` are the metrics.jsonl records a resume keeps."""
    if name == "none":
        return None
    check_logger(name)
    return TensorBoardLog(run_dir, step, resumed, kept)
