"""Run directories: every check before the first write, then files replaced atomically.

A run directory holds `config.yaml` (the resolved recipe), `run_info.json` (what made the
run: version, commit, command line, device, library versions, start and resume times),
`metrics.jsonl`, `checkpoints/{last,previous,best}.pt`, `report.json`, `tensorboard/` or
`wandb/` under `train.logger` (metrics.jsonl's scalars, `scalar_logs.py`), and whatever inputs a
family copies in so the run needs nothing else (a vocabulary, the corpus manifest). The
lifecycle is the same for every family:

1. `inspect_run_dir` reads what is there (nothing is written) and `check_start` decides whether
   this command may start or resume it; a refusal leaves every byte as it was.
2. The family builds its model, loads its data, and (on resume) the trainer loads and checks
   the newest intact checkpoint (last.pt, else previous.pt with a warning), still without
   writing; `space_needed` then checks the filesystem has room for the run's checkpoints
   (a probe file in step 1 already showed it writable).
3. Only then `write_run_files` replaces the files, each atomically.

A trained run is read back with `saved_config` (config.yaml checked against the family's
schema), `checkpoint_path` (best.pt, else last.pt with a warning) and `check_checkpoint_config`
(the checkpoint was made by this config, up to the keys --resume may change).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from gfnem_cli.engine.checkpoint import PREVIOUS, seed_everything, tensor_bytes
from gfnem_cli.engine.config import flatten, load_config, resolve_config
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.files import check_free_space, check_writable_dir, write_text_atomic
from gfnem_cli.engine.provenance import gfnem_version, source_commit
from gfnem_cli.engine.run_header import header_lines
from gfnem_cli.engine import distributed, row_noise
from gfnem_cli.engine.precision import use_compile, use_deterministic, use_precision
from gfnem_cli.engine.scalar_logs import check_logger

LAST, BEST = "last", "best"
RUN_FILES = ("config.yaml", "run_info.json", "metrics.jsonl", "report.json", "checkpoints")
# keys --resume may change: how long to train, how often to evaluate and checkpoint, and
# where the scalars also go (train.logger changes no figure)
RESUMABLE_CHANGES = {"train.steps", "train.max_model_updates", "train.eval_every",
                     "train.checkpoint_every", "train.logger"}


@dataclass
class RunDirState:
    """What a run directory holds before this command touches it."""

    path: Path
    exists: bool
    has_config: bool            # config.yaml: a run was started here
    has_checkpoint: bool        # checkpoints/last.pt or previous.pt: something to resume
    has_last: bool = False      # checkpoints/last.pt: a fresh start would replace a run

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / f"{LAST}.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return distributed.local_device(
            torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise GfnemError(f"unknown device '{name}'", hint="use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GfnemError("--device cuda was asked for but no CUDA device is visible",
                         hint="use --device cpu")
    return distributed.local_device(torch.device(name))


def inspect_run_dir(out: Path) -> RunDirState:
    """Refuse an --out that is a file, a non-run folder with other files, or unwritable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GfnemError("--out names a file, not a run directory", out,
                         hint="choose a directory name for the run")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GfnemError("a parent of --out is a file, not a directory", out)
    has_config = (out / "config.yaml").is_file()
    if out.exists() and not has_config:
        foreign = sorted(p.name for p in out.iterdir()      # a killed first write leaves
                         if p.name not in RUN_FILES and not _temporary(p))  # a temporary
        if foreign:
            raise GfnemError(f"exists and is not a gfnem run directory (it holds "
                             f"{', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''})",
                             out, hint="choose another --out")
    check_writable_dir(existing, out)           # a probe file: read-only or not ours
    if (out / "checkpoints").is_dir():
        check_writable_dir(out / "checkpoints")
    last = (out / "checkpoints" / f"{LAST}.pt").is_file()
    previous = (out / "checkpoints" / PREVIOUS).is_file()
    return RunDirState(out, out.exists(), has_config, last or previous, last)


def check_start(state: RunDirState, resume: bool) -> None:
    """May this command start (or resume) the run? Raises before anything is written."""
    if resume and not state.has_config:
        raise GfnemError("nothing to resume: no run was started here", state.path,
                         hint="drop --resume to start it")
    if not resume and state.has_last:
        raise GfnemError("this directory already holds a run", state.path,
                         hint="pass --resume to continue it, or choose another --out")


def read_saved_config(run_dir: Path) -> dict:
    """The run's `config.yaml` as a mapping, or a one-line error for a damaged one (a family
    then checks it against its schema with `config.load_config`)."""
    path = Path(run_dir) / "config.yaml"
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GfnemError("not a gfnem run directory (no config.yaml)", run_dir,
                         hint="create one with `gfnem train RECIPE --out DIR`") from None
    except (UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise GfnemError(f"unreadable run config ({type(exc).__name__})", path,
                         mark.line + 1 if mark is not None else None,
                         hint="restore it, or start a new run") from None
    if not isinstance(tree, dict):
        raise GfnemError("a run config must be a mapping of keys to values", path)
    return tree


def saved_config(run_dir: Path, defaults) -> dict:
    """The run's config.yaml, checked against the family's schema like a recipe (a hand-edited
    one that no longer validates is a one-line error, not a traceback later)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        read_saved_config(run_dir)      # the "not a run directory" error
    return load_config(defaults, path)


def checkpoint_path(run_dir: Path, which: str = BEST, on_warning=None) -> Path:
    """checkpoints/{which}.pt; a run never validated has no best.pt, so last.pt is used."""
    run_dir = Path(run_dir)
    if which not in (BEST, LAST):
        raise GfnemError(f"unknown checkpoint {which!r}", hint="use best or last")
    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.exists() and which == BEST:
        path = run_dir / "checkpoints" / f"{LAST}.pt"
        if path.exists() and on_warning is not None:
            on_warning(f"{run_dir}: no best.pt (the run was never validated); using last.pt")
    if not path.exists():
        raise GfnemError("this run has no checkpoint yet", run_dir,
                         hint="let `gfnem train` reach its first checkpoint, or resume it")
    return path


def check_checkpoint_config(checkpoint: dict, config: dict, run_dir: Path,
                            name: str = "the run's checkpoint") -> None:
    """A checkpoint must have been made by this config (up to the resumable keys).

    Only the keys the checkpoint's config has are compared: a key added to the recipe schema
    after the run began is missing from it, and `config` (config.yaml read by today's code)
    holds that key's default, which by the rule for new keys reproduces the older behaviour.
    Without this, every run made before a key was added would be refused."""
    saved, now = flatten(checkpoint["config"]), flatten(config)
    if any(saved[k] != now.get(k) for k in saved if k not in RESUMABLE_CHANGES):
        raise GfnemError(f"config.yaml does not match {name}", Path(run_dir) / "config.yaml",
                         hint="restore the run's config.yaml")


def check_resume_config(saved: dict, wanted: dict, resumable: set[str], run_dir: Path) -> None:
    """Only the keys in `resumable` (steps, caps, intervals) may change on --resume."""
    old, new = flatten(saved), flatten(wanted)
    for key in sorted(set(old) | set(new)):
        if key not in resumable and old.get(key) != new.get(key):
            raise GfnemError(f"--resume with a different '{key}' ({old.get(key)!r} in the run, "
                             f"{new.get(key)!r} now)", Path(run_dir) / "config.yaml",
                             hint="resume with the recipe and --set values the run began with")


def _temporary(path: Path) -> bool:
    """A temporary file of `files.write_atomic`: `.NAME.XXXX.tmp`, never a finished file."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files a killed write left behind."""
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for stale in folder.iterdir():
                if _temporary(stale):
                    stale.unlink(missing_ok=True)


def write_run_files(out: Path, config: dict, files: dict[str, str], info: dict) -> None:
    """config.yaml, the family's own files and run_info.json, each replaced atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    for name, text in files.items():
        write_text_atomic(out / name, text)
    write_text_atomic(out / "run_info.json", json.dumps(info, indent=2) + "\n")


def begin(defaults, recipe: Path | None, overrides: list[str], out: Path, resume: bool
          ) -> tuple[dict, RunDirState]:
    """The first half of every family's `train_run`: the resolved config and what `out`
    holds, refused (before anything is written) when this command may not start or resume
    it, when a resume changes a key other than `RESUMABLE_CHANGES`, or when `train.logger`
    names a package that cannot be imported."""
    config = resolve_config(defaults, recipe, overrides)
    check_logger(config["train"].get("logger", "none"))
    state = inspect_run_dir(Path(out))
    check_start(state, resume)
    if resume:
        check_resume_config(saved_config(out, defaults), config, RESUMABLE_CHANGES, Path(out))
    return config, state


def launch(trainer, state: RunDirState, resume: bool, saved: dict | None, files: dict[str, str],
           config: dict, device: torch.device, seed: int, command: list[str] | None,
           describe: list[str] | tuple = (), networks: tuple = ()) -> dict:
    """The end of every family's `train_run`: on resume load and check the checkpoint (still
    writing nothing; a run killed before its first checkpoint starts again from step 0), then
    write the run's files, restore the checkpoint or seed every generator, and train.
    `describe` are the family's lines of the run's header (its data: `run_header.py`);
    `networks` the modules `train.precision` applies to (`precision.py`)."""
    train = config["train"]
    if train.get("deterministic") and train.get("row_noise") and device.type == "cuda":
        # row_noise.inverse_cdf takes a float cumsum, which torch refuses in deterministic
        # mode on CUDA: refused here, before anything is written, not at the first step
        raise GfnemError("train.row_noise draws through a float cumsum, for which torch has "
                         "no deterministic CUDA kernel, so it cannot run with "
                         "train.deterministic: true on a GPU",
                         hint="set train.deterministic: false, or train.row_noise: false")
    resumed = resume and state.has_checkpoint
    checkpoint = trainer.load_checkpoint() if resumed else None
    if checkpoint is not None:
        check_checkpoint_config(checkpoint, saved, state.path)
    check_free_space(_nearest_existing(state.path),
                     space_needed(trainer, checkpoint, state.path), state.path)
    trainer.header = header_lines(state.path, device, trainer.method, config, describe,
                                  checkpoint["step"] if checkpoint else None,
                                  trainer.options.steps)
    # every check passed: from here on files are written, each atomically (by rank 0 alone
    # under data parallelism; every rank seeds its own generators, `distributed`)
    world = distributed.world()
    if world.is_main:
        if checkpoint is None:  # a fresh start: an older run's previous.pt is never resumed
            (state.path / "checkpoints" / PREVIOUS).unlink(missing_ok=True)
        write_run_files(state.path, config, files,
                        run_info(state.path, device, checkpoint["step"] if checkpoint else None,
                                 command, world.size))
    use_deterministic(config["train"].get("deterministic", False))
    row_noise.configure(config["train"].get("row_noise", False), seed)
    precision = config["train"].get("precision", "float32")
    if use_precision(precision, device, networks):
        trainer.header.append(f"precision: bf16 autocast in {len(networks)} networks "
                              "(log-probabilities, rewards and the model's sums in float32)")
    elif precision != "float32":
        trainer.header.append(f"warning: train.precision: {precision} changes nothing here: "
                              "this method has no networks besides the model, whose sums "
                              "stay float32")
    if use_compile(config["train"].get("compile", False), networks):
        trainer.header.append(f"torch.compile: {len(networks)} networks (the first steps "
                              "compile them)")
    if checkpoint is not None:
        trainer.restore(checkpoint)
    else:
        seed_everything(distributed.rank_seed(seed))
    trainer.start_metrics(resumed=checkpoint is not None,
                          logger=config["train"].get("logger", "none"))
    distributed.barrier()
    return trainer.fit()


# A checkpoint holds the model's and sampler's tensors and each Adam optimizer's two moments
# per parameter (empty before the first step, hence 3x the tensors a method holds at the
# start); the pickled rest (config, RNG states, EM state) stays well under 1 MiB.
CHECKPOINT_FACTOR, CHECKPOINT_OVERHEAD = 3, 1 << 20


def space_needed(trainer, checkpoint: dict | None, run_dir: Path) -> int:
    """Free bytes a run needs before it starts: room for each of last.pt, previous.pt and
    best.pt not yet there, and for the temporary copy every checkpoint write makes before its
    rename (an estimate from the method's tensors, or the resumed checkpoint's if larger)."""
    size = max(CHECKPOINT_FACTOR * tensor_bytes(trainer.method.state_dict()),
               tensor_bytes(checkpoint) if checkpoint is not None else 0) + CHECKPOINT_OVERHEAD
    folder = Path(run_dir) / "checkpoints"
    missing = sum(not (folder / name).is_file()
                  for name in (f"{LAST}.pt", PREVIOUS, f"{BEST}.pt"))
    return size * (1 + missing)


def _nearest_existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return path


def run_info(out: Path, device: torch.device, resumed_from: int | None,
             command: list[str] | None = None, world_size: int = 1) -> dict[str, Any]:
    """What made this run, kept across resumes (each resume is appended)."""
    path = Path(out) / "run_info.json"
    info: dict[str, Any] = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            info = {}
        if not isinstance(info, dict):          # hand-edited into something else
            info = {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entry = {"time": now, "command": command if command is not None else sys.argv,
             "device": str(device), "host": platform.node(), "world_size": world_size}
    if resumed_from is None or not info:
        info = {"gfnem_version": gfnem_version(), "commit": source_commit(), "python": sys.version.split()[0],
                "torch": torch.__version__, "cuda": torch.version.cuda,
                "started": entry, "resumes": []}
    else:
        info.setdefault("resumes", []).append({**entry, "from_step": resumed_from})
    return info
