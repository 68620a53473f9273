"""Finished runs read back as numbers: their figures (`gfnem summarize`), their curves (`plot`).

Two readers, one rule for each file, the same for every family:

* `read_figures(path)`: a run directory gives its `report.json` (what `Trainer.fit` wrote at
  the end: steps, the validation figures of the best checkpoint under `best.`, the last
  training step's under `last_train.`); an evaluation JSON (`gfnem evaluate RUN --json F`)
  gives its figures and names its run. Figures are the numbers of the file, nested mappings
  flattened to dotted names (`best.val_nll_per_token`); flags, names and lists (the length
  buckets) are not figures, and a null (a non-finite figure, written so in strict JSON) is no
  figure either, so it reads as missing rather than as a number.
* `read_records(run)`: the `metrics.jsonl` records, tolerating what a kill leaves: a torn last
  line, a blank one, a line that is not a record (the trainer skips the same on resume).

Refusals are one line naming the path: not a run, a run that never finished, a JSON file that
is not an evaluation of a run. `mean_sd` is the summary a paper's table gives: the mean and the
sample standard deviation (n - 1; none for a single run).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.runs import read_saved_config

REPORT, EVALUATION = "report", "evaluation"
PLACE = ("time", "kind", "step")     # where a metrics.jsonl record sits, not what it measured


@dataclass
class RunFigures:
    run: Path                      # the run directory
    source: Path                   # the file the figures were read from
    kind: str                      # REPORT or EVALUATION
    config: dict                   # the run's config.yaml, as saved
    figures: dict[str, float]
    measured_on: dict[str, Any] = field(default_factory=dict)   # an evaluation's data, split

    @property
    def seed(self) -> Any:
        train = self.config.get("train")
        return train.get("seed") if isinstance(train, dict) else None


def numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a JSON mapping, nested mappings under dotted names; no flag, no list."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numbers(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            out[name] = float(value)
    return out


NOT_FIGURES = ("not a run directory, nor an evaluation of a run written by "
               "`gfnem evaluate RUN --json FILE`")


def _read_json(path: Path, problem: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GfnemError(f"{problem} (not JSON: {type(exc).__name__})", path) from None


def read_figures(path: Path) -> RunFigures:
    """The figures of a run directory (its report.json) or of an evaluation JSON."""
    path = Path(path)
    if path.is_dir():
        config = read_saved_config(path)            # "not a gfnem run directory" when none
        report = path / "report.json"
        if not report.is_file():
            raise GfnemError("this run has no report.json: its training has not finished",
                             path, hint="resume it with `gfnem train RECIPE --out RUN "
                                        "--resume`, or give its evaluation JSON")
        payload = _read_json(report, "unreadable report.json")
        if not isinstance(payload, dict):
            raise GfnemError("report.json is not a mapping of figures", report)
        return RunFigures(path, report, REPORT, config, numbers(payload))
    if not path.exists():
        raise GfnemError("no such run directory or evaluation JSON", path)
    payload = _read_json(path, NOT_FIGURES)
    if not isinstance(payload, dict) or not isinstance(payload.get("run"), str):
        raise GfnemError(NOT_FIGURES, path)
    run = _run_of_evaluation(path, payload["run"])
    figures = numbers({k: v for k, v in payload.items() if k != "length_filter"})
    return RunFigures(run, path, EVALUATION, read_saved_config(run), figures,
                      {"data": payload.get("data"), "split": payload.get("split")})


def _run_of_evaluation(path: Path, named: str) -> Path:
    """The run an evaluation JSON names: as written (from here), the folder the JSON sits in
    when that is a run (`--json RUN/test.json`), or the name taken from the JSON's folder."""
    for candidate in (Path(named), path.parent, path.parent / named):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise GfnemError(f"this evaluation names run {named!r}, which is not a run directory from "
                     "here", path, hint="give the run directory itself, or evaluate again "
                                        "with --json inside the run directory")


def read_records(run: Path) -> list[dict[str, Any]]:
    """The records of RUN/metrics.jsonl, lines torn by a kill skipped."""
    run = Path(run)
    read_saved_config(run)                           # "not a gfnem run directory" when none
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise GfnemError("this run has no metrics.jsonl yet", run,
                         hint="let `gfnem train` take its first step")
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:             # a torn or blank line
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            records.append(record)
    return records


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The figures of one metrics.jsonl record (its numbers, less its place)."""
    return {k: v for k, v in numbers(record).items() if k not in PLACE}


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1); no deviation for one value."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)
