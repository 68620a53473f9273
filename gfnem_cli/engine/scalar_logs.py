"""Where a training run also sends its scalars (`train.logger`): nowhere, TensorBoard or W&B.

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

With `wandb` the same scalars go to Weights & Biases, **offline by default** (a cluster node
often has no network; `wandb sync RUN/wandb/latest-run` uploads later), or online when the
environment says `WANDB_MODE=online` (`WANDB_PROJECT`, default `gfnem`, names the project).
Each gfnem run is one W&B run, its id kept in RUN/wandb/gfnem-run-id; the resolved recipe is
its config and each record is logged at its own step. Offline, every start writes one
self-contained segment: a resume (or a logger turned on at one) replays the kept records into a
new segment and removes the earlier segments of this run, which hold nothing the new one lacks
but the superseded steps, so the latest segment is always exactly metrics.jsonl's history.
Online, a resume continues the same W&B run (`resume="allow"`) from the next step.
"""
from __future__ import annotations

import importlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterable

from gfnem_cli.engine.errors import GfnemError

LOGGERS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"                          # wandb.init(dir=RUN) writes RUN/wandb/
WANDB_ID_FILE = "gfnem-run-id"
WANDB_SEGMENT_PREFIX = "offline-run-"
WANDB_MODES = ("offline", "online", "disabled")
PACKAGES = {"tensorboard": (("tensorboard", "torch.utils.tensorboard"),
                            "pip install tensorboard (or pip install -e '.[tensorboard]')"),
            "wandb": (("wandb",), "pip install wandb (or pip install -e '.[wandb]')")}
EVENT_FILE_PREFIX = "events.out.tfevents."
NOT_SCALARS = ("time", "kind", "step")       # the record's place, not a figure


def check_logger(name: str) -> None:
    """Refuse (before any write) a logger whose package cannot be imported."""
    if name not in LOGGERS:
        raise GfnemError(f"unknown train.logger {name!r}", hint="use " + " or ".join(LOGGERS))
    if name in PACKAGES:
        modules, install = PACKAGES[name]
        try:
            for module in modules:
                importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - missing, or an install that cannot load
            raise GfnemError(f"train.logger: {name} needs the {name} package, which "
                             f"cannot be imported ({type(exc).__name__})",
                             hint=f"{install}, or set train.logger: none") from None
    if name == "wandb" and wandb_mode() not in WANDB_MODES:
        raise GfnemError(f"WANDB_MODE={os.environ.get('WANDB_MODE')!r} is not a mode gfnem "
                         "knows", hint="use " + ", ".join(WANDB_MODES) + ", or unset it "
                                       "(offline)")


def wandb_mode() -> str:
    """W&B's mode: offline unless the environment asks for another."""
    return os.environ.get("WANDB_MODE", "").strip().lower() or "offline"


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


class WandbLog:
    """RUN/wandb/ through wandb.init: one W&B run per gfnem run (see the module's docstring)."""

    def __init__(self, run_dir: Path, step: int, resumed: bool, kept: list[dict[str, Any]]):
        import wandb
        import yaml

        folder = Path(run_dir) / WANDB_DIR
        mode, id_file = wandb_mode(), folder / WANDB_ID_FILE
        if not resumed or not id_file.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            id_file.write_text(secrets.token_hex(4) + "\n", encoding="utf-8")
        run_id = id_file.read_text(encoding="utf-8").strip()
        replay = mode != "online" or not resumed
        if mode == "offline":              # the new segment will hold the whole history
            for segment in folder.glob(WANDB_SEGMENT_PREFIX + "*"):
                shutil.rmtree(segment, ignore_errors=True)
        config_path = Path(run_dir) / "config.yaml"
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) \
            if config_path.is_file() else {}
        self.run = wandb.init(
            dir=str(run_dir), mode=mode, id=run_id, resume="allow",
            project=os.environ.get("WANDB_PROJECT") or "gfnem", name=Path(run_dir).name,
            config=config, settings=wandb.Settings(silent=True, console="off"))
        if replay:
            for record in kept:
                self.log(record)

    def log(self, record: dict[str, Any]) -> None:
        values = dict(scalars_of(record))
        if values:
            self.run.log(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        self.run.finish()


def open_logger(name: str, run_dir: Path, step: int, resumed: bool,
                kept: list[dict[str, Any]]) -> TensorBoardLog | WandbLog | None:
    """The logger `train.logger` names (None for `none`), opened after the run's files are
    written; `kept` are the metrics.jsonl records a resume keeps."""
    if name == "none":
        return None
    check_logger(name)
    kind = WandbLog if name == "wandb" else TensorBoardLog
    return kind(run_dir, step, resumed, kept)
